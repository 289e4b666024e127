"""Settings of the corpus's Django project (DATABASE_URL, CORPUS_PLANTED from the environment)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

_db = urlsplit(os.environ.get("DATABASE_URL", "postgresql://app:app-password@127.0.0.1:5432/app"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "corpus-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["rest_framework", "tests.corpus.apps.django_app.catalog"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "tests.corpus.apps.django_app.catalog.middleware.ServerTimingMiddleware",
]
ROOT_URLCONF = "tests.corpus.apps.django_app.urls"
ASGI_APPLICATION = "tests.corpus.apps.django_app.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/"),
        "USER": _db.username or "",
        "PASSWORD": _db.password or "",
        "HOST": _db.hostname or "127.0.0.1",
        "PORT": str(_db.port or 5432),
        "CONN_MAX_AGE": 60,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 25,
}
PLANTED = os.environ.get("CORPUS_PLANTED", "").lower() in {"1", "true", "yes"}
