"""apiscope: profile a running ASGI API server, per endpoint, without a restart."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:  # one source of truth: the version pyproject.toml gives the installed distribution
    __version__ = version("apiscope")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "instrument"]


def instrument(app: Any, **options: Any) -> Any:
    """Wrap an ASGI app with the apiscope agent and return the wrapped app.

    For FastAPI/Starlette apps the middleware is installed in place (the returned object is the
    same app); for any other ASGI callable a wrapping callable is returned.
    """
    from apiscope.agent.api import instrument as _instrument

    return _instrument(app, **options)
