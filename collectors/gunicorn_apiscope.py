"""gunicorn server hooks: put the apiscope agent in every worker as it starts.

Use it as (or import it from) the gunicorn config file:

    gunicorn -c collectors/gunicorn_apiscope.py -k uvicorn.workers.UvicornWorker -w 4 app:app

or, in your own gunicorn.conf.py:

    from gunicorn_apiscope import post_worker_init  # noqa: F401

Why `post_worker_init`: gunicorn calls it in each worker after the worker has loaded the app
(`worker.wsgi`) and before it serves; an Uvicorn worker hands `worker.wsgi` to uvicorn only
when it starts serving. Wrapping the app there instruments every worker, including the ones
gunicorn starts later to replace dead or recycled (`--max-requests`) workers, with nothing
injected from outside. Each worker's agent serves its own socket (`agent-<pid>.sock`), which
`apiscope attach MASTER_PID --no-inject` pulls from.

Set `APISCOPE_DISABLE=1` to start the workers without the agent.
"""

from __future__ import annotations

import os
from typing import Any


def post_worker_init(worker: Any) -> None:
    """Instrument the worker's ASGI app in place; never stop the worker from serving."""
    if os.environ.get("APISCOPE_DISABLE", "") not in ("", "0"):
        return
    app = getattr(worker, "wsgi", None)  # the loaded app, ASGI for Uvicorn workers
    if app is None:
        worker.log.warning("apiscope: the worker has no loaded app; not instrumented")
        return
    try:
        import apiscope

        # Starlette/FastAPI apps are changed in place; other ASGI callables come back wrapped.
        worker.wsgi = apiscope.instrument(app)
    except Exception as exc:  # the agent is an observer: a failure must not cost a worker
        worker.log.warning("apiscope: worker %s not instrumented: %s", worker.pid, exc)
        return
    worker.log.info("apiscope: agent active in worker %s", worker.pid)
