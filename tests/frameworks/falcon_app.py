"""A tiny Falcon ASGI app: resources with responders, a suffixed route, a field converter, a
responder that fails."""

from __future__ import annotations

import falcon
import falcon.asgi


class Items:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     item_id: int) -> None:
        resp.media = {"item_id": item_id}


class ItemCollection:
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"created": True}
        resp.status = falcon.HTTP_201


class Users:
    async def on_get_orders(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                            name: str) -> None:
        resp.media = {"user": name}


class Refund:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     item_id: int) -> None:
        raise LookupError(f"no payment for item {item_id}")  # Falcon answers 500 itself


class Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.text = "ok"


app = falcon.asgi.App()
app.add_route("/items/{item_id:int}", Items())
app.add_route("/items", ItemCollection())
app.add_route("/users/{name}/orders", Users(), suffix="orders")
app.add_route("/items/{item_id:int}/refund", Refund())
app.add_route("/health", Health())
