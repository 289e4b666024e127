"""`python -m tests.corpus.apps.django_app.prestart`: create the tables and seed the catalogue."""

from __future__ import annotations

import os
import random
from datetime import date, timedelta

import django
from django.core.management import call_command

AUTHORS = 80
BOOKS = 3000


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.corpus.apps.django_app.settings")
    django.setup()
    # The catalog app has no migration files: syncdb creates its tables from the models.
    call_command("migrate", run_syncdb=True, verbosity=0)
    from .catalog.models import Author, Book

    if Author.objects.exists():
        return
    rng = random.Random(7)
    authors = Author.objects.bulk_create(
        Author(name=f"Author {n}", country=rng.choice(["FR", "DE", "JP", "BR"]))
        for n in range(1, AUTHORS + 1))
    start = date(1990, 1, 1)
    Book.objects.bulk_create(
        Book(title=f"Book {n}", author=authors[n % AUTHORS], price_cents=rng.randint(500, 5000),
             published=start + timedelta(days=rng.randint(0, 12000)))
        for n in range(1, BOOKS + 1))


if __name__ == "__main__":
    main()
