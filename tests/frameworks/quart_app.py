"""A tiny Quart app: async and sync views, a blueprint, converters, a MethodView, a view that
fails."""

from __future__ import annotations

from quart import Blueprint, Quart
from quart.views import MethodView

app = Quart(__name__)
items = Blueprint("items", __name__, url_prefix="/items")


@items.get("/<int:item_id>")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@items.post("/")
def create_item() -> tuple[dict[str, bool], int]:  # a plain def: Quart runs it in a thread
    return {"created": True}, 201


class Orders(MethodView):
    async def get(self, name: str) -> dict[str, str]:
        return {"user": name}


@items.get("/<int:item_id>/refund")
async def refund(item_id: int) -> dict[str, int]:
    raise LookupError(f"no payment for item {item_id}")  # Quart answers 500 itself


@app.get("/health")
async def health() -> str:
    return "ok"


app.register_blueprint(items)
app.add_url_rule("/users/<name>/orders", view_func=Orders.as_view("orders"))
