"""Naming the function of a line from the application's source."""

from __future__ import annotations

from pathlib import Path

from apiscope.analysis.source import enclosing_function

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
