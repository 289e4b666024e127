from __future__ import annotations

import json
from datetime import date
from typing import Any

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import aget_object_or_404, get_object_or_404
from django.views import View
from django.views.decorators.http import require_GET
from django.views.generic import ListView

from .models import Author, Book


def book_json(book: Book) -> dict[str, Any]:
    return {"id": book.pk, "title": book.title, "author": book.author.name,
            "published": book.published.isoformat(), "price_cents": book.price_cents}


async def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def book_list(request: HttpRequest) -> JsonResponse:
    books = Book.objects.select_related("author")
    page = Paginator(books, per_page=20).get_page(request.GET.get("page"))
    return JsonResponse({"count": page.paginator.count, "page": page.number,
                         "results": [book_json(b) for b in page]})


def book_detail(request: HttpRequest, book_id: int) -> JsonResponse:
    book = get_object_or_404(Book.objects.select_related("author"), pk=book_id)
    return JsonResponse(book_json(book))


async def book_count(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"books": await Book.objects.acount(),
                         "authors": await Author.objects.acount()})


async def author_detail(request: HttpRequest, author_id: int) -> JsonResponse:
    author = await aget_object_or_404(Author, pk=author_id)
    titles = [b.title async for b in author.books.order_by("-published")[:5]]
    return JsonResponse({"id": author.pk, "name": author.name, "latest": titles})


class BookCreateView(View):
    def post(self, request: HttpRequest) -> HttpResponse:
        data = json.loads(request.body)
        author = get_object_or_404(Author, pk=data["author_id"])
        book = Book.objects.create(title=data["title"], author=author,
                                   published=date.fromisoformat(data["published"]),
                                   price_cents=int(data["price_cents"]))
        return JsonResponse(book_json(book), status=201)


class AuthorBooksView(View):
    def get(self, request: HttpRequest, author_id: int) -> JsonResponse:
        author = get_object_or_404(Author, pk=author_id)
        books = author.books.select_related("author")[:20]
        return JsonResponse({"author": author.name, "books": [book_json(b) for b in books]})


class AuthorList(ListView):
    """A generic view: its `get` is Django's own (`BaseListView.get`)."""

    model = Author
    paginate_by = 20
    ordering = ["id"]

    def render_to_response(self, context: dict[str, Any], **kwargs: Any) -> JsonResponse:
        page = context["page_obj"]
        return JsonResponse({"page": page.number, "authors": [
            {"id": a.pk, "name": a.name, "country": a.country} for a in page]})
