"""threadpool_saturation: sync `def` handlers queueing for the thread pool.

Starlette runs sync handlers in anyio's default thread limiter. The agent samples the limiter:
an observation is saturated when tasks are waiting for a token or every token is borrowed. The
share of saturated observations grades the flag.

When stacks were sampled they must show that sync work really occupies the pool: the mean
number of worker threads busy at once (running or blocked in handler code, not waiting for
work) must reach `pool_worker_busy` times the pool's *total* tokens. Not the borrowed tokens:
a token is released only when the event loop resumes the task that borrowed it, so on a busy
loop several tokens are held by threads that already finished their call, and requests queue
for them all the same (they do wait for the pool). The floor only rules out a limiter held
full by something other than thread work, with its workers idle.
Each process has its own pool and is judged alone; the flag is the most saturated one's.
The flag names the sync endpoint with the most worker-thread samples (else the most requests).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import MetricValue, handler_location, make_flag, pct
from apiscope.analysis.stats import window_ticks
from apiscope.analysis.thresholds import grade
from apiscope.model import ThreadPoolSample, ThreadRole

SUGGESTION = ("make the slow sync handlers `async def` with async I/O, or raise the limit:"
              " anyio.to_thread.current_default_thread_limiter().total_tokens = N at startup")


class ThreadPoolSaturationRule:
    kind = "threadpool_saturation"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        by_pid: dict[int, list[ThreadPoolSample]] = defaultdict(list)
        for p in ctx.data.threadpool:
            by_pid[p.pid].append(p)
        ticks = sum(window_ticks(ctx).values()) if by_pid else 0  # samples taken, all processes
        judged = [found for pid, pool in sorted(by_pid.items())
                  if (found := self._judge(ctx, pid, pool, ticks)) is not None]
        if not judged:
            return []
        # The most saturated process's pool: each process has its own, and a server's workers
        # seldom share the load evenly (two gunicorn workers, one pool full 40% of the time and
        # the other never, read 20% when their observations were pooled).
        share, severity, pid, pool, busy = max(judged, key=lambda j: (j[0], -j[2]))
        endpoint = self._endpoint(ctx)
        waiting_max = max(p.waiting for p in pool)
        tokens = max(p.total_tokens for p in pool)
        borrowed = sum(p.borrowed_tokens for p in pool) / len(pool)
        whose = f"process {pid}'s thread pool" if len(by_pid) > 1 else "the thread pool"
        evidence = (f"{whose} had every one of its {tokens} tokens taken or tasks waiting"
                    f" in {pct(share)} of observations (up to {waiting_max} waiting)")
        if len(judged) < len(by_pid):
            evidence += f"; {len(judged)} of the {len(by_pid)} processes' pools saturated"
        if busy is not None:
            evidence += f"; {busy:.1f} worker threads were busy at once on average"
        if endpoint:
            evidence += f"; {endpoint} is the sync handler holding them most"
        metric: dict[str, MetricValue] = {"saturated_share": share, "waiting_max": waiting_max,
                                          "total_tokens": tokens, "borrowed_mean": borrowed}
        if busy is not None:
            metric["busy_workers_mean"] = busy
        return [make_flag(self.kind, severity, endpoint, handler_location(ctx, endpoint),
                          evidence, metric, SUGGESTION)]

    @staticmethod
    def _judge(ctx: AnalysisContext, pid: int, pool: list[ThreadPoolSample], ticks: int,
               ) -> tuple[float, str, int, list[ThreadPoolSample], float | None] | None:
        """(saturated share, severity, pid, observations, busy workers) of one process's pool,
        or None when it was not saturated; `ticks`: the samples taken a thread, all windows."""
        if len(pool) < 5:
            return None
        saturated = [p for p in pool if p.waiting > 0 or p.borrowed_tokens >= p.total_tokens]
        share = len(saturated) / len(pool)
        severity = grade(share, ctx.thresholds.pool_saturated_share)
        if severity is None:
            return None
        workers = [a for a in ctx.samples if a.role is ThreadRole.WORKER and a.sample.pid == pid]
        busy = (sum(a.sample.count for a in workers if a.active) / ticks
                if workers and ticks else None)
        tokens = max(p.total_tokens for p in pool)
        if busy is not None and busy < ctx.thresholds.pool_worker_busy * tokens:
            return None
        return share, severity, pid, pool, busy

    @staticmethod
    def _endpoint(ctx: AnalysisContext) -> str | None:
        sync = {f"{r.method} {r.template}" for r in ctx.data.routes if not r.is_async}
        held: Counter[str] = Counter()
        for a in ctx.samples:
            if a.role is ThreadRole.WORKER and a.active and a.endpoint is not None \
                    and a.endpoint in sync:
                held[a.endpoint] += a.sample.count
        if not held:
            for endpoint in sync:
                held[endpoint] = len(ctx.by_endpoint.get(endpoint, []))
        ranked = sorted(held.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[0][0] if ranked and ranked[0][1] > 0 else None
