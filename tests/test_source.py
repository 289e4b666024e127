"""Naming the function of a line from the application's source."""

from __future__ import annotations

from pathlib import Path

from apiscope.source import def_line, enclosing_function, hands_back_at

SOURCE = '''import functools


def plain(x):
    return x + 1


class Stock:
    @functools.cache
    def lines(self, product_id):
        rows = []
        for r in range(3):
            rows.append(r)
        return rows

    async def fetch(self):
        def inner():
            return 2
        return inner()


TOTAL = 3
'''


def test_lines_are_named_as_py_spy_names_their_functions(tmp_path: Path) -> None:
    path = tmp_path / "stock.py"
    path.write_text(SOURCE)
    assert enclosing_function(str(path), 5) == "plain"
    assert enclosing_function(str(path), 13) == "Stock.lines"
    assert enclosing_function(str(path), 18) == "Stock.fetch.<locals>.inner"
    assert enclosing_function(str(path), 19) == "Stock.fetch"
    assert enclosing_function(str(path), 22) is None  # module level
    assert enclosing_function(str(path), 8) is None  # the class line itself


def test_unreadable_or_foreign_files_name_nothing(tmp_path: Path) -> None:
    assert enclosing_function(str(tmp_path / "gone.py"), 3) is None
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    assert enclosing_function(str(broken), 1) is None
    template = tmp_path / "page.html"
    template.write_text("def f():\n    pass\n")
    assert enclosing_function(str(template), 2) is None


HANDLERS = '''from app import router


@router.get("/items")
async def list_items(limit: int = 10):
    def key(item):
        return item.name
    items = sorted(load(), key=key)
    return items[:limit]


@router.get("/item/{item_id}")
@cached
def read_item(item_id: int):
    if item_id < 0:
        return None
    return load_one(item_id)


async def bare():
    await notify()
'''


def test_where_a_handler_hands_its_result_back(tmp_path: Path) -> None:
    path = tmp_path / "routes.py"
    path.write_text(HANDLERS)
    # Asked by the line its code begins at (its first decorator's) or its def line: its one
    # `return <value>`, not that of the function inside it.
    assert hands_back_at(str(path), 4) == 9
    assert hands_back_at(str(path), 5) == 9
    # Several returns: the def line, not the decorator's.
    assert hands_back_at(str(path), 12) == 14
    assert hands_back_at(str(path), 20) == 20  # no return at all
    assert hands_back_at(str(path), 2) is None  # no function begins there
    assert hands_back_at(str(tmp_path / "gone.py"), 4) is None


def test_a_decorated_handlers_def_line(tmp_path: Path) -> None:
    path = tmp_path / "routes.py"
    path.write_text(HANDLERS)
    # Its code begins at its first decorator: the reader looks for the `def`.
    assert def_line(str(path), 4) == 5
    assert def_line(str(path), 12) == 14  # two decorators
    assert def_line(str(path), 14) == 14
    assert def_line(str(path), 20) == 20  # undecorated
    assert def_line(str(tmp_path / "gone.py"), 4) == 4  # unreadable here: as given
