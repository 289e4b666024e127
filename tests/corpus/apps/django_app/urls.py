from __future__ import annotations

from django.conf import settings
from django.urls import include, path
from rest_framework.routers import DefaultRouter

from .catalog import views
from .catalog.api import BookViewSet

router = DefaultRouter()
router.register("books", BookViewSet, basename="book")

urlpatterns = [
    path("health/", views.health),
    path("api/", include("tests.corpus.apps.django_app.catalog.urls")),
    path("api/v2/", include(router.urls)),
]
if settings.PLANTED:
    urlpatterns.append(path("reports/", include("tests.corpus.apps.django_app.catalog.reports")))
