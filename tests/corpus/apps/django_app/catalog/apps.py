from __future__ import annotations

from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "tests.corpus.apps.django_app.catalog"
    label = "catalog"
