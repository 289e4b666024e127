"""A Django REST framework viewset over the catalogue, served by a router at /api/v2/."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet
from rest_framework import serializers, viewsets

from .models import Book


class BookSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.name", read_only=True)

    class Meta:
        model = Book
        fields = ["id", "title", "author", "published", "price_cents"]


class BookViewSet(viewsets.ReadOnlyModelViewSet):  # planted: n_plus_one wait
    """Its `list` and `retrieve` are DRF's own; the serializer reads each book's author."""

    serializer_class = BookSerializer

    def get_queryset(self) -> QuerySet[Book]:
        books = Book.objects.order_by("id")
        # Planted: without select_related, the serializer loads each book's author on its own.
        return books if settings.PLANTED else books.select_related("author")
