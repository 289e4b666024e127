from __future__ import annotations

from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from . import views

urlpatterns = [
    path("books/", views.book_list),
    path("books/new/", csrf_exempt(views.BookCreateView.as_view())),
    path("books/count/", views.book_count),
    path("books/<int:book_id>/", views.book_detail),
    path("authors/<int:author_id>/", views.author_detail),
    path("authors/<int:author_id>/books/", views.AuthorBooksView.as_view()),
    path("authors/", views.AuthorList.as_view()),
]
