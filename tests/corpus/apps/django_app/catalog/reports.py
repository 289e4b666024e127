"""Report views with the bottlenecks the corpus plants (routed only when PLANTED is set)."""

from __future__ import annotations

import time

from django.http import HttpRequest, JsonResponse
from django.urls import path

from .models import Author, Book

AUDIT_CALL_SECONDS = 0.03


async def audit(request: HttpRequest) -> JsonResponse:
    time.sleep(AUDIT_CALL_SECONDS)  # planted: event_loop_blocked wait
    return JsonResponse({"status": "recorded"})


def catalogue(request: HttpRequest) -> JsonResponse:
    rows = []
    for book in Book.objects.order_by("id")[:40]:
        author = book.author  # planted: n_plus_one wait
        rows.append({"title": book.title, "author": author.name})
    return JsonResponse({"books": rows})


def author_card(request: HttpRequest, pk: int) -> JsonResponse:
    # An id that names no author raises DoesNotExist (get_object_or_404 would answer 404): Django
    # answers 500 itself.
    author = Author.objects.get(pk=pk)  # planted: error_rate error
    return JsonResponse({"name": author.name, "country": author.country})


urlpatterns = [
    path("audit/", audit),
    path("catalogue/", catalogue),
    path("authors/<int:pk>/", author_card),
]
