"""/products?q=, /products/{product_id}."""

from __future__ import annotations

from typing import Any

import falcon
from falcon.asgi import Request, Response
from sqlalchemy import or_, select

from ..errors import NotFound
from ..models import Product
from .common import page


def product_out(p: Product) -> dict[str, Any]:
    return {"id": p.id, "sku": p.sku, "name": p.name, "category": p.category,
            "price_cents": p.price_cents, "active": p.active}


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ProductsResource:
    async def on_get(self, req: Request, resp: Response) -> None:
        limit, offset = page(req, default=20)
        q = (req.get_param("q") or "").strip()
        stmt = select(Product).where(Product.active.is_(True))
        if q:
            if len(q) < 2:
                raise falcon.HTTPInvalidParam("at least 2 characters", "q")
            pattern = f"%{_escape_like(q)}%"
            stmt = stmt.where(or_(Product.name.ilike(pattern, escape="\\"),
                                  Product.sku.ilike(pattern, escape="\\")))
        category = req.get_param("category")
        if category:
            stmt = stmt.where(Product.category == category)
        stmt = stmt.order_by(Product.name, Product.id).limit(limit).offset(offset)
        products = (await req.context.db.scalars(stmt)).all()
        resp.media = {"q": q, "items": [product_out(p) for p in products],
                      "limit": limit, "offset": offset}

    async def on_get_item(self, req: Request, resp: Response, product_id: int) -> None:
        product = await req.context.db.get(Product, product_id)
        if product is None:
            raise NotFound("product not found", product_id=product_id)
        resp.media = product_out(product)
