from __future__ import annotations

from django.conf import settings
from django.urls import include, path

from .catalog import views

urlpatterns = [
    path("health/", views.health),
    path("api/", include("tests.corpus.apps.django_app.catalog.urls")),
]
if settings.PLANTED:
    urlpatterns.append(path("reports/", include("tests.corpus.apps.django_app.catalog.reports")))
