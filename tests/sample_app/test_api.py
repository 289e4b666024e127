"""The healthy API: CRUD, pagination bounds, 404 and 422, and the seeded data.

Every test runs on both stacks (`stack`): SQLite, and PostgreSQL through asyncpg with Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sample_app.seed import ORDER_LINES, TAGS
from tests.sample_app.inprocess import TEST_ITEMS, InProcessApp, Stack, serve


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[InProcessApp]:
    with serve(stack=stack) as app:
        yield app


def test_health_reports_what_was_seeded(api: InProcessApp) -> None:
    body = api.get("/health").json()
    assert body == {"status": "ok", "fixed": False, "seeded_items": TEST_ITEMS,
                    "seeded_orders": TEST_ITEMS // 5}


def test_seeded_items_have_ids_from_one_and_known_tags(api: InProcessApp) -> None:
    page = api.get("/items/", params={"limit": 100}).json()
    assert [item["id"] for item in page["items"]] == list(range(1, 101))
    for item in page["items"]:
        assert 1 <= len(item["tags"]) <= 3 and set(item["tags"]) <= set(TAGS)
        assert item["tags"] == sorted(item["tags"])
        assert item["price_cents"] > 0 and item["description"].startswith(f"A {item['name']}")


def test_seeded_orders_have_many_lines(api: InProcessApp) -> None:
    for order_id in (1, 2, TEST_ITEMS // 5):
        order = api.get(f"/orders/{order_id}").json()
        assert ORDER_LINES[0] <= len(order["lines"]) <= ORDER_LINES[1]
        assert ORDER_LINES[0] >= 10  # the N+1 case needs at least 10 queries per request
        assert order["total_cents"] == sum(line["quantity"] * line["unit_price_cents"]
                                           for line in order["lines"])


def test_seed_is_deterministic_and_follows_the_seed(stack: Stack) -> None:
    with serve(items=100, stack=stack) as one, serve(items=100, stack=stack) as two, \
            serve(items=100, seed=7, stack=stack) as other:
        first = [app.get("/items/", params={"limit": 50}).json() for app in (one, two, other)]
        orders = [app.get("/orders/3").json() for app in (one, two, other)]
    assert first[0] == first[1] and orders[0] == orders[1]
    assert first[0] != first[2] and orders[0] != orders[2]


def test_create_then_read_back(api: InProcessApp) -> None:
    body = {"name": "  Test kettle ", "description": "boils", "price_cents": 1234,
            "tags": ["Kitchen", "brand-new", "kitchen"]}
    created = api.post("/items/", json=body)
    assert created.status_code == 201
    item = created.json()
    assert item["id"] > TEST_ITEMS  # assigned by the database, after the seeded rows
    assert item == {"id": item["id"], "name": "Test kettle", "description": "boils",
                    "price_cents": 1234, "tags": ["brand-new", "kitchen"]}
    assert api.get(f"/items/{item['id']}").json() == item
    page = api.get("/items/", params={"offset": item["id"] - 1, "limit": 1}).json()
    assert page["items"] == [item] and page["total"] >= item["id"]


@pytest.mark.parametrize("body", [
    {"description": "no name", "price_cents": 100},
    {"name": "free", "price_cents": 0},
    {"name": "negative", "price_cents": -5},
    {"name": "x" * 101, "price_cents": 100},
    {"name": "bad tag", "price_cents": 100, "tags": ["no spaces allowed"]},
    {"name": "too many tags", "price_cents": 100, "tags": [f"t{i}" for i in range(11)]},
    {"name": "client id", "price_cents": 100, "id": 7},
    {"name": "wrong type", "price_cents": "lots"},
])
def test_create_rejects_bad_input(api: InProcessApp, body: dict[str, object]) -> None:
    response = api.post("/items/", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1},
                                    {"offset": 1_000_001}, {"limit": "ten"}])
def test_pagination_bounds_are_enforced(api: InProcessApp, params: dict[str, object]) -> None:
    assert api.get("/items/", params=params).status_code == 422


def test_pages_are_ordered_and_do_not_overlap(api: InProcessApp) -> None:
    default = api.get("/items/").json()
    assert (default["limit"], default["offset"], len(default["items"])) == (20, 0, 20)
    first = api.get("/items/", params={"limit": 100, "offset": 0}).json()["items"]
    second = api.get("/items/", params={"limit": 100, "offset": 100}).json()["items"]
    ids = [item["id"] for item in first + second]
    assert ids == sorted(ids) and len(set(ids)) == 200
    beyond = api.get("/items/", params={"offset": 100_000}).json()
    assert beyond["items"] == [] and beyond["total"] >= TEST_ITEMS


def test_missing_things_answer_404(api: InProcessApp) -> None:
    for path in ("/items/999999", "/orders/999999", "/items/999999/quote",
                 "/items/999999/forecast", "/items/999999/summary"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert "not found" in response.json()["detail"]


def test_malformed_ids_answer_422(api: InProcessApp) -> None:
    for path in ("/items/abc", "/orders/1.5", "/items/x/stock", "/search?q=ab"):
        assert api.get(path).status_code == 422, path
