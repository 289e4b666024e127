"""A Django 5 project served over ASGI: `uvicorn tests.corpus.apps.django_app.asgi:application`."""
