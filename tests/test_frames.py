from __future__ import annotations

import sysconfig
from pathlib import Path

import apiscope
from apiscope.frames import (
    FrameKinds,
    Interpreter,
    frame_kind,
    install_dir,
    is_app_frame,
    package_of,
)
from apiscope.model import Frame

SITE = "/venv/lib/python3.11/site-packages"


def test_frame_kinds_tell_app_library_and_stdlib() -> None:
    stdlib = sysconfig.get_paths()["stdlib"]
    assert frame_kind(Frame("f", f"{stdlib}/asyncio/base_events.py", 1)) == "stdlib"
    assert frame_kind(Frame("f", "asyncio/base_events.py", 1)) == "stdlib"  # short py-spy name
    assert frame_kind(Frame("f", "selectors.py", 1)) == "stdlib"
    assert frame_kind(Frame("f", "<frozen importlib._bootstrap>", 1)) == "stdlib"
    assert frame_kind(Frame("f", f"{SITE}/uvicorn/main.py", 1)) == "library"
    assert frame_kind(Frame("f", "/usr/lib/python3/dist-packages/yaml/a.py", 1)) == "library"
    assert frame_kind(Frame("f", "/usr/lib/python3.9/json/decoder.py", 1)) == "stdlib"  # other
    assert frame_kind(Frame("f", "C:\\Python312\\Lib\\json\\decoder.py", 1)) == "stdlib"
    assert frame_kind(Frame("f", "/srv/shop/main.py", 1)) == "app"
    assert frame_kind(Frame("f", "/srv/lib/pythonic/main.py", 1)) == "app"
    assert frame_kind(Frame("f", "main.py", 1)) == "app"


def test_short_names_are_not_the_application_when_this_interpreter_has_them() -> None:
    assert not is_app_frame(Frame("run_forever", "asyncio/base_events.py", 600), ())
    assert is_app_frame(Frame("read_item", "shop/api.py", 12), ())


def test_interpreter_directories() -> None:
    python = Interpreter(["/opt/py/lib/python3.12"], ["/opt/env/lib"])
    assert python.installed_kind("/opt/py/lib/python3.12/json/decoder.py") == "stdlib"
    assert python.installed_kind("/opt/env/lib/pkg/mod.py") == "library"
    assert python.installed_kind("/opt/py/lib/python3.12x/mine.py") is None  # not a directory
    assert frame_kind(Frame("f", "/opt/env/lib/pkg/mod.py", 1), interpreter=python) == "library"
    assert frame_kind(Frame("f", "/opt/py/lib/python3.12x/mine.py", 1),
                      interpreter=python) == "app"


def test_never_the_application_whatever_the_directory() -> None:
    # module bodies (imports, the entry script), console scripts, generated code
    for frame, kind in [(Frame("<module>", "/srv/shop/main.py", 1), "stdlib"),
                        (Frame("<module>", f"{SITE}/uvicorn/__main__.py", 4), "library"),
                        (Frame("main", "/srv/venv/bin/uvicorn", 8), "library"),
                        (Frame("<module>", "/usr/bin/gunicorn", 8), "library"),
                        (Frame("f", "<string>", 1), "stdlib"),
                        (Frame("__init__", "<attrs generated init x.A>", 1), "stdlib")]:
        assert not is_app_frame(frame, ("/srv/shop",)), frame
        assert frame_kind(frame, ("/srv/shop",)) == kind, frame


def test_apiscope_own_frames_are_a_library() -> None:
    agent = Path(apiscope.__file__).parent / "agent" / "middleware.py"
    assert frame_kind(Frame("AgentMiddleware.__call__", str(agent), 113)) == "library"
    other = Frame("__call__", "/opt/tools/src/apiscope/agent/middleware.py", 113)
    assert frame_kind(other) == "library"


def test_app_roots_win_over_site_packages() -> None:
    frame = Frame("helper", f"{SITE}/shop/db.py", 9)
    assert frame_kind(frame) == "library"
    assert frame_kind(frame, (f"{SITE}/shop",)) == "app"
    kinds = FrameKinds((f"{SITE}/shop",))
    assert kinds(frame) == "app"
    assert kinds(frame) == "app"  # remembered


def test_synthetic_frames_have_no_kind() -> None:
    assert frame_kind(Frame("all", "", 0)) is None
    assert frame_kind(Frame("thread (0x1): MainThread", "", 0)) is None


def test_package_and_install_directory() -> None:
    assert package_of(f"{SITE}/sqlalchemy/orm/session.py") == "sqlalchemy"
    assert package_of("/usr/lib/python3.11/asyncio/tasks.py") == "asyncio"
    assert package_of("/usr/lib/python3.11/queue.py") == "queue"
    assert package_of("/srv/shop/main.py") == ""
    assert install_dir(f"{SITE}/httpx/_client.py") == "/venv/lib/python3.11/"
    assert install_dir("/x/lib/python3/dist-packages/yaml/a.py") == "/x/lib/python3/dist-packages/"
    assert install_dir("/srv/shop/main.py") is None
