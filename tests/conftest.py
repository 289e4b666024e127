from __future__ import annotations

import sys
from pathlib import Path

# The sample app lives at the repository root, beside src/.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real PostgreSQL and Redis servers, one of each for the whole run, for every test that asks.
from tests.services import postgres, redis_service  # noqa: E402

__all__ = ["postgres", "redis_service"]
