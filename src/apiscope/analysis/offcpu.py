"""Loop lines the kernel saw asleep: where the agent's loop watchdog measured what the stalled
loop thread was doing.

At each look during a stall the watchdog reads the loop thread's state from the kernel
(`LoopStall.activity`: on a CPU, ready for one, asleep, in I/O, on a lock). A line whose stalls
were mostly asleep or in I/O (a `time.sleep`, a sync socket read on the loop) does not run there,
whatever the sampled stacks' split guessed: it holds no GIL and uses no CPU.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from apiscope.analysis.attribution import user_frame
from apiscope.model import LoopStall

Site = tuple[int, str, int]  # (pid, file, line)


def asleep_sites(stalls: Iterable[LoopStall], roots: Sequence[str]) -> set[Site]:
    """The application lines (per process) where the loop watchdog's looks found the stalled
    loop thread asleep or in I/O more often than on a CPU or ready for one."""
    looks: dict[Site, list[int]] = defaultdict(lambda: [0, 0])
    for stall in stalls:
        line = user_frame(stall.frames, roots)
        if line is None:
            continue
        counts = looks[(stall.pid, line.file, line.line)]
        counts[0] += stall.looks_asleep
        counts[1] += stall.looks_running
    return {site for site, (off, on) in looks.items() if off > on}
