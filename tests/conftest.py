from __future__ import annotations

import signal
import sys
from pathlib import Path

# The sample app lives at the repository root, beside src/.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A suite started as a shell's background job inherits SIGINT ignored, and so would every
# server and collector it starts (an ignored signal stays ignored across exec): the tests that
# stop them as Ctrl-C does need it back. A handler is reset to the default in their children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Real PostgreSQL and Redis servers, one of each for the whole run, for every test that asks.
from tests.services import postgres, redis_service  # noqa: E402

__all__ = ["postgres", "redis_service"]
