from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import View

from .models import Item, Order


def item_detail(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"id": pk, "name": Item.objects.get(pk=pk).name})


async def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def archive(request: HttpRequest, year: str) -> JsonResponse:
    return JsonResponse({"year": year})


def refund(request: HttpRequest, pk: int) -> JsonResponse:
    raise LookupError(f"no payment for order {pk}")  # Django answers 500 itself


def orders(request: HttpRequest) -> JsonResponse:
    names = []
    for order in Order.objects.all():  # N+1: one query per order for its item
        names.append(order.item.name)
    return JsonResponse({"items": names})


class ItemList(View):
    def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"count": Item.objects.count()})

    def post(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"id": Item.objects.create(name="new").pk}, status=201)


class Stats(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        return JsonResponse({"orders": await Order.objects.acount()})
