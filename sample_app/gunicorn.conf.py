"""gunicorn settings: `gunicorn -c sample_app/gunicorn.conf.py`.

SAMPLE_APP_BIND (default 127.0.0.1:8000) and SAMPLE_APP_WORKERS (default WEB_CONCURRENCY, else
2) choose the address and the number of worker processes. Each worker runs the app's lifespan,
so with the default SQLite database each worker seeds its own temporary copy of the data.
"""

from __future__ import annotations

import os

wsgi_app = "sample_app.main:app"
worker_class = "uvicorn.workers.UvicornWorker"
bind = os.environ.get("SAMPLE_APP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SAMPLE_APP_WORKERS") or os.environ.get("WEB_CONCURRENCY") or 2)
# Seeding a fresh database takes a moment; give workers time to boot before they are killed.
timeout = 60
graceful_timeout = 10
keepalive = 5
accesslog = None
loglevel = os.environ.get("SAMPLE_APP_LOG_LEVEL", "warning")
