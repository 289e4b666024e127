"""The ASGI entry point; settings in code, the SQLite file named by $DJSHOP_DB.

The first process to start creates and fills the database, under a file lock, so that the
workers of one gunicorn master do not race to create the same tables.
"""

from __future__ import annotations

import fcntl
import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False, SECRET_KEY="test-only", ALLOWED_HOSTS=["*"],
    ROOT_URLCONF="tests.frameworks.djshop.urls",
    INSTALLED_APPS=["tests.frameworks.djshop"], MIDDLEWARE=[], USE_TZ=True,
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                           "NAME": os.environ["DJSHOP_DB"]}},
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402  (after settings)
from django.db import connection  # noqa: E402

from .models import Item, Order  # noqa: E402

ORDERS = 5


def _create_database() -> None:
    with open(os.environ["DJSHOP_DB"] + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if Item._meta.db_table in connection.introspection.table_names():
            return
        with connection.schema_editor() as editor:
            editor.create_model(Item)
            editor.create_model(Order)
        items = [Item.objects.create(name=f"item-{i}") for i in range(ORDERS)]
        Order.objects.bulk_create([Order(item=item) for item in items])
    connection.close()  # the app's threads open their own connections


_create_database()
application = get_asgi_application()
