"""gil_contention: request threads measurably waiting for the GIL.

Raised only on measurement, never inferred from threads being off-CPU: a thread waiting on a
socket inside psycopg, sleeping, or hashing in C code that releases the GIL is not contending.

Where the agent learnt its GIL's address, the kernel says which thread waits for it: the
collector looks at the busy threads' current system call (`collectors/gillooks.py`), and a
thread blocked on the GIL's futex is waiting for the GIL, nothing else. A window (after the
session's warm-up, `stats.warmup_end`, when caches fill once) is contended when the request
threads (event loop, pool workers) between them waited for the GIL at least `GIL_MIN_WAIT` of
it and at least the lowest `gil_wait_share` of their busy time (running, queued for a CPU, or
waiting for the GIL); the figure graded is that share, over the contended windows.

Otherwise (an agent that could not learn the address) two measurements must agree, in the
same sampling window of one process:

- the agent's GIL watchdog (a thread that wakes up now and then and times how late it gets the
  GIL back, the time it waited in the OS run queue for a CPU taken out) waited on average at
  least the lowest `gil_wait_share` of CPython's switch interval (5 ms) per wake-up: a thread
  that wants the GIL while another runs pure Python waits for that one to be asked to drop it,
  up to the whole interval; with the GIL free it gets it in microseconds;
- the request-handling threads (event loop, pool workers) other than the busiest one ran, or
  were ready to run, `BUSY_THREAD_CORES` of the window between them (the kernel's per-thread
  CPU and run-queue time): someone besides the GIL's main user wanted it. One busy event loop
  alone also makes the watchdog wait, but contends with no one.

The figure graded is the mean wait per wake-up over the contended windows, as a share of the
switch interval; the contended windows must add up to `GIL_MIN_SECONDS`. Either way, when the
host's CPUs were `HOST_SATURATED` busy over the contended windows the flag is low and says so:
there the GIL's holder waits for a CPU too, and no CPU was left for the processes the advice
would add; the GIL is the limit again once the host has CPU to spare. The location is the
hottest application line running (on-CPU) in those windows, in the pool threads if any ran
application code (code running in several threads is what contends; a busy event loop's own
work is `event_loop_blocked`'s and `cpu_hotspot`'s). With the kernel's looks, a thread that
contended (`_contending`: found waiting for the GIL, and running Python whenever it had it)
counts however little of the time its line got the GIL, and however long its function ran
for each time it waited, as long as it waited at all (`LINE_MIN_WAIT`): the ratio rests on a
few samples at the budget's rates (three pool threads running a pure-Python loop, the kernel
finding one of them waiting for the GIL 0.8 s a CPU second, showed it running three times as
long as waiting in 14 samples, and the location went to a line of the loop seen once), while
C code that released the GIL, as argon2's hash, shows no wait at all even in a thread that
contends between its calls. Without an application line the
contention is the framework's or a library's and belongs to the server figures, not to a flag.
A line can hold the GIL only if it runs: one that runs less than `HOLDER_MIN_RUN` of the time
it shows (a sleep, a socket wait) is never the location; a line contends only if its function
also waits: a function off-CPU less than `LINE_MIN_WAIT` of the time it shows, or running more
than `LINE_MAX_RUN_PER_WAIT` times as long as it waited (C code that released the GIL and ran on
in parallel, waiting only as each call returned; a busy loop that alone holds the GIL), holds no
location either, and
neither is a loop line the loop watchdog's looks at the kernel found mostly asleep or in I/O.
The waits are weighed per function, not per line: CPython hands the GIL over at a loop's
back-edge and at calls, so a pure-Python loop waits at its `for` line and runs at the body's,
which alone would look like C code running without the GIL.
Threads that contend for the GIL each run about 1/N of the time they show with N of them at
it, so the bar is low.
The GIL's busiest holder may serve no requests at all: a scheduler or cache-refresh thread
running Python beside the server. When the application lines such threads ran (on-CPU, in the
contended windows) used more CPU than the request threads' contending lines, the flag is
located there, names the thread, and has no route: the requests are its victims.
Where the collector also read which thread held the GIL at the looks that found one waiting
(`collectors/gillooks.py`, `MIN_HOLDER_LOOKS` of them at least), the holders' Python places
the flag, not the waiters': each holder thread's running lines weighted by its share of those
looks, pool threads' first, a thread serving no requests when such threads held it most; the
evidence says what share the event loop, the pool threads and other threads held it.
Sessions without the agent's watchdog get no gil_contention flag: it cannot be measured there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from apiscope.analysis.context import HANDLER_ROLES, AnalysisContext, Flag
from apiscope.analysis.cpu import endpoint_or_handed, handed_routes, host_busy_share
from apiscope.analysis.flags import (
    MetricValue,
    frame_location,
    make_flag,
    pct,
    severity_rank,
    where,
)
from apiscope.analysis.offcpu import asleep_sites
from apiscope.analysis.stats import warmup_end
from apiscope.analysis.thresholds import grade
from apiscope.model import SWITCH_INTERVAL, Frame, GilSample, SampleState, ThreadRole

BUSY_THREAD_CORES = 0.15
# Request threads waiting for the GIL this share of a window between them (measured by the
# kernel's looks) make a window contended; less is a thread now and then returning from I/O
# while another runs Python.
GIL_MIN_WAIT = 0.10
# Threads waiting for the GIL, on average, for each core of CPU the process used (the kernel's
# looks; the process's CPU from its resource samples): two threads running Python at once wait
# one for each core used (each runs half the time, waits the other half), three wait two. Less
# than half a thread waiting is no queue for the GIL: threads taking it back briefly after
# I/O, or a host short of CPUs preempting whichever thread holds it (a Django app under ASGI,
# its request threads at 45% of a core, waited 0.1-0.2 threads per second on a busy host).
GIL_MIN_QUEUE = 0.5
# A thread that spent this share of its busy time (running, queued, or on the GIL) waiting for
# the GIL is one of the contending threads.
WAITER_MIN_SHARE = 0.2
HOLDER_MIN_WANT = 0.5
HOLDER_MIN_RUN = 0.2  # running / shown: 1/N for N threads contending; a sleep's is ~0.03
# Off-CPU / shown: a line contending for the GIL waits for it now and then. C code that
# releases the GIL (a password hash) runs on beside the GIL's holder and waits only on return.
LINE_MIN_WAIT = 0.1
# Running / off-CPU, in the contended windows: Python contending with even one other thread
# waits about as long as it runs, and longer with more. A line that ran this many times as long
# as it waited ran mostly without the GIL: C code that released it, waiting only as each call
# returned to Python (a password hash's thread is one of the contending threads, and shows more
# CPU than the Python starved of the GIL ever gets).
LINE_MAX_RUN_PER_WAIT = 2.0
# Contention measured while the host's CPUs were this busy (every process, `host_cpu`, over
# the contended windows) is at most low: the GIL's holder was itself queued for a CPU part of
# the time, and the processes the advice would add would find no CPU to run on (an MLflow
# server under load, its Flask views in threads, waited 33-42% of its busy time on a host 99%
# in use: medium, where the route's time went to the host's CPUs).
HOST_SATURATED = 0.9
# Contended windows must add up to this much of the session: one busy second is not a pattern.
# In seconds, not windows, since the budget lengthens windows (up to 8 s) on a busy target.
GIL_MIN_SECONDS = 2.0
# Looks that read which thread held the GIL while another waited, at least, in the contended
# windows, for the holders to place the flag; fewer leave the contending lines to place it.
MIN_HOLDER_LOOKS = 20
# A thread holding the GIL at this share of a window's looks (another thread waiting) runs
# Python whenever it runs there: its lines hold the GIL however little they wait themselves.
DOMINANT_HOLDER = 0.5

SUGGEST_BACKGROUND = ("a thread that serves no requests holds the GIL the requests wait for:"
                      " run its work in a process of its own (a worker, a scheduled job), in"
                      " smaller pieces with pauses between, or in code that releases the GIL")
SUGGESTION = ("CPU-bound Python in several threads runs one thread at a time: move it into"
              " processes (a ProcessPoolExecutor, more workers with fewer threads) or into code"
              " that releases the GIL")

Window = tuple[float, float]
HOLDER_NAMES = {"loop": "the event loop", "pool": "pool threads", "other": "other threads"}


def wait_share(gil: Sequence[GilSample], start: float, end: float) -> float | None:
    """The watchdog's mean wait per wake-up over [start, end), as a share of the switch
    interval (the samples overlapping the span weighted by their overlap); None without any."""
    waited = wakes = 0.0
    for g in gil:
        lo, hi = max(start, g.ts - g.seconds), min(end, g.ts)
        if hi > lo and g.seconds > 0:
            part = (hi - lo) / g.seconds
            waited += g.wait_seconds * part
            wakes += g.acquisitions * part
    return waited / wakes / SWITCH_INTERVAL if wakes > 0 else None


def _cores(ctx: AnalysisContext, pid: int, start: float, end: float) -> float:
    """The CPU a process used over [start, end), in cores: from its resource samples (the
    whole process, threads too short-lived for the per-thread figures included), else the sum
    of its threads' measured CPU."""
    seen = [r.cpu_percent for r in ctx.data.resources if r.pid == pid and start < r.ts <= end]
    if seen:
        return sum(seen) / len(seen) / 100.0
    ran = sum(c.seconds for c in ctx.data.thread_cpu if c.pid == pid and c.window == start)
    return ran / (end - start) if end > start else 0.0


class GilContentionRule:
    kind = "gil_contention"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        if not ctx.data.gil:
            return []
        contended = self._contended(ctx)
        looked = self._looked_pids(ctx)
        found: list[tuple[int, Flag]] = []
        for pid in sorted({pid for pid, _ in contended}):
            windows = {w: share for (p, w), share in contended.items() if p == pid}
            if sum(end - start for start, end in windows) >= GIL_MIN_SECONDS:
                flag = self._flag(ctx, pid, windows, pid in looked)
                if flag is not None:
                    found.append((pid, flag))
        return merge_processes(found)

    def _contended(self, ctx: AnalysisContext) -> dict[tuple[int, Window], float]:
        """(pid, window) -> the contended share, for the windows that contended: from the
        kernel's looks at the request threads where the session has them, else from the GIL
        watchdog's waits."""
        looked = self._looked_pids(ctx)
        out = self._looked(ctx, looked) if looked else {}
        fallback = self._watched(ctx)
        out.update({key: share for key, share in fallback.items() if key[0] not in looked})
        return out

    @staticmethod
    def _looked_pids(ctx: AnalysisContext) -> set[int]:
        return {c.pid for c in ctx.data.thread_cpu if c.gil_share is not None}

    def _looked(self, ctx: AnalysisContext, pids: set[int]) -> dict[tuple[int, Window], float]:
        """The share of the request threads' busy time (running, queued for a CPU, or waiting
        for the GIL) spent waiting for the GIL, per window in which they waited at least
        `GIL_MIN_WAIT` of it."""
        ends = {w.start: w.end for w in ctx.data.windows}
        warm = warmup_end(ctx)
        roles = ctx.data.roles
        waited: dict[tuple[int, float], float] = defaultdict(float)
        busy: dict[tuple[int, float], float] = defaultdict(float)
        for c in ctx.data.thread_cpu:
            if c.pid not in pids or c.window < warm or \
                    roles.get((c.pid, c.tid)) not in HANDLER_ROLES:
                continue
            seconds = ends.get(c.window, c.window) - c.window
            wait = (c.gil_share or 0.0) * seconds
            waited[(c.pid, c.window)] += wait
            busy[(c.pid, c.window)] += c.seconds + (c.runqueue or 0.0) + wait
        low = ctx.thresholds.gil_wait_share[0]
        out: dict[tuple[int, Window], float] = {}
        for (pid, start), wait in waited.items():
            seconds = ends.get(start, start) - start
            share = wait / busy[(pid, start)] if busy[(pid, start)] > 0 else 0.0
            if seconds > 0 and wait >= GIL_MIN_WAIT * seconds and share >= low \
                    and wait >= GIL_MIN_QUEUE * _cores(ctx, pid, start, ends[start]) * seconds:
                out[(pid, (start, ends[start]))] = share
        return out

    def _watched(self, ctx: AnalysisContext) -> dict[tuple[int, Window], float]:
        """(pid, window) -> the watchdog's wait share, for the windows that contended."""
        ends = {w.start: w.end for w in ctx.data.windows}
        warm = warmup_end(ctx)
        roles = ctx.data.roles
        demand: dict[tuple[int, float], list[float]] = defaultdict(list)
        for c in ctx.data.thread_cpu:
            if c.window >= warm and roles.get((c.pid, c.tid)) in HANDLER_ROLES:
                demand[(c.pid, c.window)].append(c.seconds + (c.runqueue or 0.0))
        by_pid: dict[int, list[GilSample]] = defaultdict(list)
        for g in ctx.data.gil:
            by_pid[g.pid].append(g)
        low = ctx.thresholds.gil_wait_share[0]
        out: dict[tuple[int, Window], float] = {}
        for (pid, start), wanted in demand.items():
            seconds = ends.get(start, start) - start
            # what the threads other than the busiest wanted: someone to contend with
            others = sum(wanted) - max(wanted)
            share = wait_share(by_pid.get(pid, []), start, ends[start])
            if (seconds > 0 and others >= BUSY_THREAD_CORES * seconds and share is not None
                    and share >= low):
                out[(pid, (start, ends[start]))] = share
        return out

    @staticmethod
    def _contending(ctx: AnalysisContext, pid: int, starts: set[float],
                    ) -> set[tuple[int, float]]:
        """(tid, window) of the threads that contended for the GIL, by the kernel's looks:
        waiting for it `WAITER_MIN_SHARE` of their busy time, and wanting it (running, queued
        or waiting for the GIL) for `HOLDER_MIN_WANT` of the time they showed active work. A
        thread that slept or waited on a socket and only took the GIL back on waking waited
        too, but ran no Python to speak of: it is not the contention's cause."""
        ends = {w.start: w.end for w in ctx.data.windows}
        shown: dict[tuple[int, float], float] = defaultdict(float)
        for a in ctx.samples:
            if a.sample.pid == pid and a.window in starts and a.active:
                shown[(a.sample.tid, a.window)] += a.seconds
        out = set()
        for c in ctx.data.thread_cpu:
            if c.pid != pid or c.window not in starts or not c.gil_share:
                continue
            wait = c.gil_share * (ends.get(c.window, c.window) - c.window)
            busy = wait + c.seconds + (c.runqueue or 0.0)
            if wait >= WAITER_MIN_SHARE * busy and \
                    busy >= HOLDER_MIN_WANT * shown.get((c.tid, c.window), 0.0):
                out.add((c.tid, c.window))
        return out

    def _flag(self, ctx: AnalysisContext, pid: int, windows: dict[Window, float],
              looked: bool) -> Flag | None:
        starts = {w[0] for w in windows}
        lines: dict[Frame, float] = defaultdict(float)
        # Pool threads' lines first: code running in several threads at once is what contends;
        # the event loop, one thread, is what waits.
        # Lines that mostly run when shown: pure Python, which holds the GIL while it runs (a
        # line that mostly sleeps or waits on I/O released it).
        shown: dict[Frame, float] = defaultdict(float)
        ran: dict[Frame, float] = defaultdict(float)
        # per function (file, name): where a loop waits for the GIL is not where it runs
        f_shown: dict[tuple[str, str], float] = defaultdict(float)
        f_ran: dict[tuple[str, str], float] = defaultdict(float)
        f_waited: dict[tuple[str, str], float] = defaultdict(float)
        for a in ctx.samples:
            if a.sample.pid == pid and a.window in starts and a.user is not None and a.active:
                running = a.seconds if a.sample.state is SampleState.RUNNING else 0.0
                shown[a.user] += a.seconds
                ran[a.user] += running
                code = (a.user.file, a.user.function)
                f_shown[code] += a.seconds
                f_ran[code] += running
                # A wait for a C library's own threads (argon2's lanes: `Attributed.native`)
                # is no sign of wanting the GIL.
                f_waited[code] += a.seconds if a.sample.state is SampleState.BLOCKED \
                    and not a.native else 0.0
        # Functions that do not contend: too little waiting, or running far longer than waiting.
        never_waiting = {code for code, seen in f_shown.items()
                         if f_waited[code] < LINE_MIN_WAIT * seen}
        not_waiting = never_waiting | {code for code in f_shown
                                       if f_ran[code] > LINE_MAX_RUN_PER_WAIT * f_waited[code]}
        asleep = asleep_sites(ctx.data.loop_stalls, ctx.matcher.roots)
        # Measured: the threads the kernel found waiting for the GIL are the ones contending,
        # and whatever Python they show is code wanting the GIL (however little of the time it
        # got it); a thread holding the GIL alone (a busy event loop) is flagged by other rules.
        # Measured: a thread that contended (`_contending`) shows its Python lines however
        # little of the time they got the GIL.
        contending = self._contending(ctx, pid, starts) if looked else set()
        by_line: dict[Frame, dict[str | None, float]] = defaultdict(lambda: defaultdict(float))
        handed = handed_routes(ctx)
        for roles in ({ThreadRole.WORKER}, HANDLER_ROLES):
            for a in ctx.samples:
                if (a.sample.pid == pid and a.window in starts and a.cpu > 0
                        and a.user is not None and not a.tool and a.role in roles
                        and (pid, a.user.file, a.user.line) not in asleep
                        and (((a.sample.tid, a.window) in contending
                              and (a.user.file, a.user.function) not in never_waiting)
                             or ((a.user.file, a.user.function) not in not_waiting
                                 and ran[a.user] >= HOLDER_MIN_RUN * shown[a.user]))):
                    lines[a.user] += a.cpu
                    by_line[a.user][endpoint_or_handed(a, handed)] += a.cpu
            if lines:
                break
        background = self._background(ctx, pid, starts, shown, ran)
        holder = bool(background) and sum(background.values()) > sum(lines.values())
        # Measured: which threads held the GIL while the others waited (read from the
        # interpreter at the kernel's looks). Their Python, not the waiters', is the cause.
        reads = self._holder_reads(ctx, pid, starts) if looked else {}
        holders = self._holders(reads)
        held, held_cpu = self._held_lines(ctx, pid, holders)
        placed = False  # whether the holders' lines placed the flag
        if held:
            request_held = {k: v for k, v in held.items()
                            if ctx.data.roles.get((pid, k[0])) in HANDLER_ROLES}
            other_held = {k: v for k, v in held.items() if k not in request_held}
            # A pool thread's line that runs far longer than its function waits is C code
            # that released the GIL (argon2's hash): its thread held the GIL around it, not
            # in it; unless the thread held the GIL at most of the looks of a window, which
            # only Python running all along does. The loop's own work, when it held the GIL,
            # is event_loop_blocked's and cpu_hotspot's: the pool threads' holds place the
            # flag, else the waiters' lines.
            dominant = {tid for (_, tid), part in holders.items() if part >= DOMINANT_HOLDER}
            workers = {k: v for k, v in request_held.items()
                       if ctx.data.roles.get((pid, k[0])) is ThreadRole.WORKER
                       and ((k[1].file, k[1].function) not in not_waiting or k[0] in dominant)}
            if sum(other_held.values()) > sum(request_held.values()):
                holder = True  # their CPU, not weighted: what the evidence says they ran
                background = {k: held_cpu[k] for k in other_held}
            elif workers:
                holder, placed = False, True
                lines = defaultdict(float)
                by_line = defaultdict(lambda: defaultdict(float))
                for (_, line), weight in workers.items():
                    lines[line] += weight
                for a in ctx.samples:
                    if (a.sample.pid == pid and a.window in starts and a.cpu > 0
                            and a.user is not None and a.user in lines and not a.tool):
                        by_line[a.user][endpoint_or_handed(a, handed)] += a.cpu
        if not lines and not holder:
            return None
        # Weighted by the windows' lengths: the budget makes them 1 to 8 s long.
        seconds = sum(end - start for start, end in windows)
        share = sum((end - start) * part for (start, end), part in windows.items()) / seconds
        severity = grade(share, ctx.thresholds.gil_wait_share)
        if severity is None:
            return None
        metric: dict[str, MetricValue] = {
            "gil_wait_share": share, "contended_seconds": seconds, "cause": "gil",
            "source": "kernel" if looked else "watchdog"}
        host = host_busy_share(ctx, windows)
        saturated = ""
        if host is not None:
            metric["host_busy_share"] = host
            if host >= HOST_SATURATED:
                severity = "low"
                saturated = (f"; the host's CPUs were {pct(host)} in use meanwhile: the GIL's"
                             " holder was itself waiting for a CPU part of that time, and more"
                             " processes would find none until the host has CPU to spare")
        if holder:
            return self._background_flag(ctx, pid, (severity, share, seconds), metric,
                                         background, looked, saturated)
        hot = max(lines.items(), key=lambda kv: (kv[1], kv[0].file, kv[0].line))[0]
        route = max(by_line[hot].items(), key=lambda kv: (kv[1], kv[0] or ""))[0]
        gil = [g for g in ctx.data.gil if g.pid == pid]
        loc = frame_location(hot)
        if gil:
            metric["max_wait_ms"] = max(g.max_wait_ms for g in gil)
        if held:
            metric["holder_source"] = "interpreter"
            by_role = self._holder_roles(ctx, pid, reads)
            metric.update({f"held_by_{role}": part for role, part in by_role.items()})
            holders_text = ", ".join(f"{HOLDER_NAMES[role]} at {pct(part)}"
                                     for role, part in by_role.items() if part > 0)
            hottest = ("the hottest Python of the pool threads holding it" if placed
                       else "the hottest Python contending for it")
            evidence = (f"the request threads of process {pid} spent {pct(share)} of their busy"
                        f" time waiting for the GIL over {seconds:.0f} s (measured: the kernel"
                        f" found them blocked on the GIL's futex); read from the interpreter as"
                        f" they waited, the GIL was held by {holders_text} of those looks;"
                        f" {hottest}: {where(loc)}")
        elif looked:
            evidence = (f"the request threads of process {pid} spent {pct(share)} of their busy"
                        f" time waiting for the GIL over {seconds:.0f} s (measured: the kernel"
                        f" found them blocked on the GIL's futex); the hottest Python contending"
                        f" for it: {where(loc)}")
        else:
            mean_ms = share * SWITCH_INTERVAL * 1000  # over the contended windows
            metric["mean_wait_ms"] = mean_ms
            evidence = (f"a thread of process {pid} that wanted the GIL waited {mean_ms:.1f} ms"
                        f" for it on average ({pct(share)} of the"
                        f" {SWITCH_INTERVAL * 1000:.0f} ms switch interval) over {seconds:.0f} s"
                        f" in which two or more request threads ran at once (measured by the"
                        f" agent's GIL watchdog); the hottest line running then: {where(loc)}")
        return make_flag(self.kind, severity, route, loc, evidence + saturated, metric,
                         SUGGESTION)

    @staticmethod
    def _holder_reads(ctx: AnalysisContext, pid: int, starts: set[float],
                      ) -> dict[tuple[float, int], int]:
        """(window, tid) -> the looks over `starts` that found a thread of `pid` waiting for
        the GIL while `tid` held it (tid 0: a holder not named)."""
        return {(window, tid): count for (window, p, tid), count in ctx.data.gil_holders.items()
                if p == pid and window in starts}

    @staticmethod
    def _holders(reads: dict[tuple[float, int], int]) -> dict[tuple[float, int], float]:
        """(window, tid) -> the share of the window's holder reads (`_holder_reads`) at which
        `tid` held the GIL; {} when fewer than `MIN_HOLDER_LOOKS` were read. Holders not named
        (tid 0) keep their share."""
        looks: dict[float, int] = defaultdict(int)
        for (window, _), count in reads.items():
            looks[window] += count
        if sum(looks.values()) < MIN_HOLDER_LOOKS:
            return {}
        return {(window, tid): count / looks[window]
                for (window, tid), count in reads.items() if tid}

    @staticmethod
    def _holder_roles(ctx: AnalysisContext, pid: int, reads: dict[tuple[float, int], int],
                      ) -> dict[str, float]:
        """The share of the holder reads (`_holder_reads`) at which the event loop, a pool
        thread, or another thread (one not named included) held the GIL."""
        counts = {"loop": 0, "pool": 0, "other": 0}
        for (_, tid), count in reads.items():
            role = ctx.data.roles.get((pid, tid))
            counts["loop" if role is ThreadRole.LOOP else "pool"
                   if role is ThreadRole.WORKER else "other"] += count
        total = sum(counts.values())
        return {role: count / total for role, count in counts.items()} if total else {}

    @staticmethod
    def _held_lines(ctx: AnalysisContext, pid: int, holders: dict[tuple[float, int], float],
                    ) -> tuple[dict[tuple[int, Frame], float], dict[tuple[int, Frame], float]]:
        """(tid, line) -> the application lines the GIL's holders ran (on-CPU) in the windows
        they held it in: their CPU weighted by the share of the window's looks at which their
        thread held the GIL while another waited for it, and their CPU as it was."""
        weighted: dict[tuple[int, Frame], float] = defaultdict(float)
        cpu: dict[tuple[int, Frame], float] = defaultdict(float)
        if not holders:
            return {}, {}
        for a in ctx.samples:
            share = holders.get((a.window, a.sample.tid))
            if share and a.sample.pid == pid and a.cpu > 0 and a.user is not None \
                    and not a.tool:
                weighted[(a.sample.tid, a.user)] += a.cpu * share
                cpu[(a.sample.tid, a.user)] += a.cpu
        return dict(weighted), dict(cpu)

    @staticmethod
    def _background(ctx: AnalysisContext, pid: int, starts: set[float],
                    shown: dict[Frame, float], ran: dict[Frame, float],
                    ) -> dict[tuple[int, Frame], float]:
        """(tid, line) -> CPU seconds, of the application lines that threads serving no requests
        ran in the contended windows, when they mostly ran when shown (Python holding the GIL;
        not a sleep or a socket wait)."""
        out: dict[tuple[int, Frame], float] = defaultdict(float)
        for a in ctx.samples:
            if (a.sample.pid == pid and a.window in starts and a.cpu > 0 and a.user is not None
                    and not a.tool and a.role is ThreadRole.OTHER
                    and ran[a.user] >= HOLDER_MIN_RUN * shown[a.user]):
                out[(a.sample.tid, a.user)] += a.cpu
        return out

    def _background_flag(self, ctx: AnalysisContext, pid: int,
                         graded: tuple[str, float, float], metric: dict[str, MetricValue],
                         background: dict[tuple[int, Frame], float], looked: bool,
                         saturated: str) -> Flag:
        """The flag located at the busiest holder that serves no requests (`_background`),
        given the contention's (severity, share, seconds) and its metric so far."""
        severity, share, seconds = graded
        (tid, hot), _ = max(background.items(),
                            key=lambda kv: (kv[1], kv[0][1].file, kv[0][1].line))
        thread_cpu = sum(cpu for (t, _), cpu in background.items() if t == tid)
        name = ctx.data.thread_names.get((pid, tid))
        thread = f"thread {name!r} ({tid})" if name else f"thread {tid}"
        loc = frame_location(hot)
        how = ("measured: the kernel found them blocked on the GIL's futex" if looked
               else "measured by the agent's GIL watchdog")
        evidence = (f"the request threads of process {pid} spent {pct(share)} of their busy"
                    f" time waiting for the GIL over {seconds:.0f} s ({how}); the GIL's busiest"
                    f" holder serves no requests: {thread}, running Python in {where(loc)}"
                    f" for {thread_cpu / seconds:.2f} of a core in that time{saturated}")
        metric.update(holder_thread=name or str(tid), holder_cores=thread_cpu / seconds)
        return make_flag(self.kind, severity, None, loc, evidence, metric, SUGGEST_BACKGROUND)


def merge_processes(found: list[tuple[int, Flag]]) -> list[Flag]:
    """One flag per (route, location): the workers of one server contend at the same line
    for the same reason, and a flag per process said it twice. The flag kept is the most
    severe (the larger wait at equal severity); its evidence names the others' waits."""
    groups: dict[tuple[str | None, object], list[tuple[int, Flag]]] = defaultdict(list)
    for pid, flag in found:
        groups[(flag.route, flag.location)].append((pid, flag))
    out = []
    for group in groups.values():
        group.sort(key=lambda pf: (-severity_rank(pf[1].severity),
                                   -_number(pf[1].metric.get("gil_wait_share")), pf[0]))
        (_, first), others = group[0], group[1:]
        if not others:
            out.append(first)
            continue
        also = "; ".join(
            f"the same in process {pid}: {pct(_number(flag.metric.get('gil_wait_share')))} over"
            f" {_number(flag.metric.get('contended_seconds')):.0f} s" for pid, flag in others)
        metric = {**first.metric, "processes": len(group)}
        out.append(replace(first, evidence=f"{first.evidence}; {also}", metric=metric))
    return out


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
