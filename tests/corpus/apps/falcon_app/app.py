"""`uvicorn tests.corpus.apps.falcon_app.app:app` (DATABASE_URL, CORPUS_PLANTED).

A `falcon.asgi.App`: resources with suffixed responders, a middleware whose `process_startup`
creates the async engine and whose request/response methods open and close each request's
session, a `falcon.before` hook validating bodies with pydantic, error handlers and the
standard JSON handler taught datetimes. CORPUS_PLANTED turns on a blocking psycopg call in the
order view and a pure-Python checksum on the loop in the customer's order list.
"""

from __future__ import annotations

import json
import logging

import falcon
import falcon.asgi
import falcon.media
from falcon.asgi import Request, Response

from . import errors
from .config import Settings, settings
from .db import Database
from .middleware import ServiceMiddleware
from .resources.common import dumps
from .resources.customers import CustomersResource
from .resources.health import HealthResource
from .resources.orders import OrderResource, OrdersResource
from .resources.products import ProductsResource
from .resources.reports import LegacyReportResource, RevenueReportResource

logging.basicConfig(level=logging.WARNING,
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")


def create_app(cfg: Settings = settings) -> falcon.asgi.App[Request, Response]:
    app = falcon.asgi.App(middleware=[ServiceMiddleware(Database(), cfg)])
    json_handler = falcon.media.JSONHandler(dumps=dumps, loads=json.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.req_options.strip_url_path_trailing_slash = True
    errors.register(app)

    app.add_route("/health", HealthResource())
    app.add_route("/orders", OrdersResource())
    app.add_route("/orders/{order_id:int}", OrderResource())
    customers = CustomersResource()
    app.add_route("/customers", customers)
    app.add_route("/customers/{customer_id:int}", customers, suffix="item")
    app.add_route("/customers/{customer_id:int}/orders", customers, suffix="orders")
    products = ProductsResource()
    app.add_route("/products", products)
    app.add_route("/products/{product_id:int}", products, suffix="item")
    app.add_route("/reports/revenue", RevenueReportResource())
    app.add_route("/reports/legacy", LegacyReportResource())
    return app


app = create_app()
