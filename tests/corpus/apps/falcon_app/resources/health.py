"""/health."""

from __future__ import annotations

import time

from falcon.asgi import Request, Response

from .. import __version__

_STARTED = time.time()


class HealthResource:
    async def on_get(self, req: Request, resp: Response) -> None:
        resp.media = {"status": "ok", "version": __version__,
                      "uptime_s": round(time.time() - _STARTED, 1)}
