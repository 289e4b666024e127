"""The signals that end a collection: SIGINT (Ctrl-C), SIGTERM (kill, systemd, Kubernetes)
and SIGHUP (a closed terminal) all end it the same way: the last window is flushed, every
agent is detached, the report is written and apiscope exits 0.

A signal only asks the collection to stop; the main thread then ends it in order. A second
signal while that runs is noted, not obeyed: cutting the detach short would leave agents in
the server (SIGKILL still ends apiscope at once; the agents then remove themselves).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TextIO

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_on_signals(stop: Callable[[], None], out: TextIO | None = None) -> Iterator[None]:
    """Call `stop()` on the first of STOP_SIGNALS; restore the previous handlers on exit.

    A signal ignored when apiscope started (`nohup` ignores SIGHUP) stays ignored.
    """
    received: list[str] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        stream = out if out is not None else sys.stderr
        if received:
            print(f"\napiscope: {name} received: already stopping (detaching the agents and"
                  " saving the session)", file=stream, flush=True)
            return
        received.append(name)
        print(f"\napiscope: {name} received: stopping", file=stream, flush=True)
        stop()

    previous: dict[signal.Signals, Any] = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
