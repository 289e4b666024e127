from __future__ import annotations

from django.urls import include, path, re_path

from . import views

api = [
    path("items/", views.ItemList.as_view()),
    path("items/<int:pk>/", views.item_detail),
    path("stats/", views.Stats.as_view()),
]

urlpatterns = [
    path("health/", views.health),
    path("api/", include(api)),
    re_path(r"^archive/(?P<year>[0-9]{4})/$", views.archive),
    path("orders/", views.orders),
    path("orders/<int:pk>/refund/", views.refund),
]
