from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from apiscope.agent.paths import (
    AppFiles,
    SocketDirError,
    installed_app_roots,
    socket_dir,
    socket_path,
)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_explicit_directory_is_created_private(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sockets"
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(target))
    assert socket_dir() == str(target)
    assert mode_of(str(target)) == 0o700
    assert socket_path(1234) == str(target / "agent-1234.sock")
    assert socket_path(99, "/elsewhere") == "/elsewhere/agent-99.sock"


def test_xdg_runtime_dir_then_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APISCOPE_SOCKET_DIR", raising=False)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert socket_dir() == str(runtime / "apiscope")
    assert mode_of(str(runtime / "apiscope")) == 0o700
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert socket_dir() == f"{tempfile.gettempdir()}/apiscope-{os.getuid()}"


def test_world_writable_directory_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(target))
    with pytest.raises(SocketDirError, match="chmod 700"):
        socket_dir()
    assert mode_of(str(target)) == 0o777  # refused, not silently repaired


def test_directory_of_another_user_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:
        target = tmp_path / "theirs"
        target.mkdir(mode=0o700)
        os.chown(target, 65534, 65534)  # nobody
    else:
        target = Path("/")  # root's, and we are not root
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(target))
    with pytest.raises(SocketDirError, match="APISCOPE_SOCKET_DIR"):
        socket_dir()


def test_symlink_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    monkeypatch.setenv("APISCOPE_SOCKET_DIR", str(link))
    with pytest.raises(SocketDirError, match="not a directory"):
        socket_dir()


def test_app_files_tell_app_code_from_libraries() -> None:
    files = AppFiles()
    assert files.is_app(__file__)
    assert not files.is_app(os.__file__)
    assert not files.is_app(pytest.__file__)
    assert not files.is_app(AppFiles.__init__.__code__.co_filename)  # apiscope itself
    assert not files.is_app("<frozen importlib._bootstrap>")


def test_app_files_follow_the_views_rules() -> None:
    """The rules of `apiscope.frames.is_app_frame`, which the agent cannot import."""
    from apiscope.frames import is_app_frame
    from apiscope.model import Frame

    files = AppFiles(prefixes=())
    cases = [("/srv/shop/api.py", "read_item"), ("/srv/shop/api.py", "<module>"),
             ("/srv/venv/bin/uvicorn", "main"), ("/usr/bin/gunicorn", "run"),
             ("/usr/lib/python3/dist-packages/yaml/a.py", "load"),
             ("/venv/lib/python3.11/site-packages/x/y.py", "f"), ("<string>", "f")]
    for file, function in cases:
        assert files.is_app(file, function) == is_app_frame(Frame(function, file, 1), ()), file


SITE = "/srv/venv/lib/python3.12/site-packages"
INSTALLED = [  # an application installed from a package index, as its route table reads
    {"method": "POST", "template": "/v1/traces", "handler": "tracer.api.v1.traces:post_traces",
     "file": f"{SITE}/tracer/api/v1/traces.py", "line": 461, "is_async": True},
    {"method": "GET", "template": "/healthz", "handler": "tracer:health",
     "file": f"{SITE}/tracer/__init__.py", "line": 3, "is_async": True},
    {"method": "GET", "template": "/docs", "handler": "fastapi.applications:swagger_ui_html",
     "file": f"{SITE}/fastapi/applications.py", "line": 1000, "is_async": True},
]


def test_an_installed_applications_files_are_learnt_from_its_route_table() -> None:
    files = AppFiles(prefixes=())
    raised_at = f"{SITE}/tracer/api/v1/utils.py"
    assert not files.is_app(raised_at, "is_not_at_capacity")  # site-packages: a library's
    files.learn_routes(INSTALLED)
    assert files.is_app(raised_at, "is_not_at_capacity")
    assert not files.is_app(f"{SITE}/tracer/api/v1/utils.py", "<module>")
    assert not files.is_app(f"{SITE}/fastapi/routing.py", "run_endpoint_function")
    assert not files.is_app(f"{SITE}/tracer_plugins/x.py", "f")  # the package, not its prefix
    # A handler of the application's own directories beside them: the installed ones are a
    # library's routes, and that library is not the application's code.
    files.learn_routes([*INSTALLED, {"method": "GET", "template": "/", "handler": "site:index",
                                     "file": "/srv/site.py", "line": 1, "is_async": False}])
    assert not files.is_app(raised_at, "is_not_at_capacity")
    assert files.is_app("/srv/site.py", "index")


def test_the_agents_installed_roots_are_the_views_app_roots() -> None:
    """`apiscope.analysis.attribution.app_roots`, which the agent cannot import, on the same
    tables: installed alone, beside local handlers, a class's module serving a library's
    method."""
    from apiscope.analysis.attribution import app_roots
    from apiscope.model import RouteInfo

    local = {"method": "GET", "template": "/", "handler": "shop.api:index",
             "file": "/srv/shop/api.py", "line": 1, "is_async": True}
    viewed = {"method": "GET", "template": "/v", "handler": "generic.views:View.get",
              "file": f"{SITE}/generic/views.py", "line": 5, "is_async": False,
              "view": "billing.views:Invoices", "view_file": f"{SITE}/billing/views.py",
              "view_line": 3}
    for rows in (INSTALLED, [*INSTALLED, local], [viewed], [INSTALLED[0], viewed]):
        routes = [RouteInfo(r["method"], r["template"], r["handler"], r["file"], r["line"],
                            r["is_async"], view=r.get("view", ""),
                            view_file=r.get("view_file", "")) for r in rows]
        views = app_roots(routes)
        installed = all("site-packages" in root for root in views)
        # Local roots are the agent's app code anyway: it learns only installed ones.
        expected = views if installed else ()
        agents = tuple(sorted(root.rstrip("/") for root in installed_app_roots(rows)))
        assert agents == expected, rows
