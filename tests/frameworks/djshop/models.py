from __future__ import annotations

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "djshop"


class Order(models.Model):
    item = models.ForeignKey(Item, on_delete=models.CASCADE)

    class Meta:
        app_label = "djshop"
