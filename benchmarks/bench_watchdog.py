"""What the agent's watchdogs cost: their threads' CPU on a loop in several states, and the
cost the pass timing adds to each pass of the loop.

Each scenario runs a real asyncio loop in a thread with the agent's `Watchdogs` watching it,
as the middleware starts them, and reads the watchdog threads' own CPU time (their schedstat,
as the agent reports it to the collector). Rounds are interleaved; medians and min/max.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from apiscope.agent.looppass import PassClock
from apiscope.agent.watchdog import WatchdogOptions, Watchdogs

SECONDS = 6.0


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def _idle(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))


async def _busy(deadline: float) -> None:
    """A healthy busy loop: 10 µs callbacks back to back, each pass short."""
    while time.perf_counter() < deadline:
        _spin(0.00001)
        await asyncio.sleep(0)


async def _crowded(deadline: float) -> None:
    """A loop crowded with quick requests: every 30-70 ms, twelve 1 ms steps in one pass (a 12 ms
    pass that no one code holds)."""
    async def step() -> None:
        _spin(0.001)

    pace = random.Random(1)  # uneven gaps, as requests come: not in step with the watchdog
    while time.perf_counter() < deadline:
        for _ in range(12):
            asyncio.get_running_loop().create_task(step())
        await asyncio.sleep(pace.uniform(0.03, 0.07))


async def _saturated(deadline: float) -> None:
    """A server at full load: every pass crowded (twelve 1 ms steps), back to back; nothing
    wrong but the load, and every pass a long one."""
    async def step() -> None:
        _spin(0.001)

    while time.perf_counter() < deadline:
        for _ in range(12):
            asyncio.get_running_loop().create_task(step())
        await asyncio.sleep(0)  # the next twelve run in the pass after these


async def _holds(deadline: float) -> None:
    """Something wrong: a request's task holding the loop 16 ms on the CPU every 30-70 ms."""
    async def hold() -> None:
        _spin(0.016)

    pace = random.Random(2)
    while time.perf_counter() < deadline:
        asyncio.get_running_loop().create_task(hold())
        await asyncio.sleep(pace.uniform(0.03, 0.07))


async def _pool(deadline: float) -> None:
    """An idle loop beside 40 pool threads sleeping in sync handlers: what the agent's looks at
    its threads (`threadlooks`, once a second) cost where there are many threads to look at."""
    def nap() -> None:
        while time.perf_counter() < deadline:
            time.sleep(0.05)

    threads = [threading.Thread(target=nap, daemon=True) for _ in range(40)]
    for thread in threads:
        thread.start()
    await _idle(deadline)
    for thread in threads:
        thread.join(1.0)


SCENARIOS: dict[str, Callable[[float], Coroutine[Any, Any, None]]] = {
    "idle": _idle, "busy, 10 µs callbacks": _busy, "crowded, 12 ms passes of 12 tasks": _crowded,
    "saturated, 12 ms passes back to back": _saturated,
    "16 ms holds every 30-70 ms": _holds, "idle, 40 pool threads asleep": _pool,
}


def watchdog_cpu(scenario: Callable[[float], Coroutine[Any, Any, None]],
                 seconds: float = SECONDS) -> tuple[float, int]:
    """(the watchdogs' CPU as a share of a core, loop passes of 10 ms or more recorded)."""
    loop = asyncio.new_event_loop()
    dogs = Watchdogs(WatchdogOptions())
    started = threading.Event()
    stalls: list[dict[str, Any]] = []

    async def main() -> None:
        dogs.see_loop()  # as the middleware does on the first request
        started.set()
        await scenario(time.perf_counter() + seconds)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    dogs.start()
    begin = time.perf_counter()
    thread.join(seconds + 30)
    elapsed = time.perf_counter() - begin
    pulled = dogs.pull()
    stalls.extend(pulled["stalls"])
    dogs.stop()
    loop.close()
    return pulled["cpu_seconds"] / elapsed, len(stalls)


def pass_cost(passes: int = 200_000, rounds: int = 7) -> dict[str, float]:
    """Microseconds a pass of a loop that runs one `await asyncio.sleep(0)` takes, with the
    pass timing installed and without (medians over interleaved rounds)."""
    plain: list[float] = []
    timed: list[float] = []

    async def spin_passes() -> None:
        for _ in range(passes):
            await asyncio.sleep(0)

    for _ in range(rounds):
        for results, install in ((plain, False), (timed, True)):
            loop = asyncio.new_event_loop()
            clock = PassClock.install(loop, 0.010) if install else None
            start = time.perf_counter()
            loop.run_until_complete(spin_passes())
            results.append((time.perf_counter() - start) / passes * 1e6)
            if clock is not None:
                clock.uninstall()
            loop.close()
    return {"plain_us": statistics.median(plain), "timed_us": statistics.median(timed)}


def run(rounds: int = 3) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    holds: dict[str, list[int]] = {name: [] for name in SCENARIOS}
    for _ in range(rounds):
        for name, scenario in SCENARIOS.items():
            share, count = watchdog_cpu(scenario)
            cpu[name].append(share)
            holds[name].append(count)
    return {"cpu": cpu, "holds": holds, "rounds": rounds, "seconds": SECONDS,
            "passes": pass_cost()}


def render(result: dict[str, Any]) -> str:
    lines = ["| loop | watchdogs' CPU, share of a core (median, min, max) | passes of 10 ms or"
             " more recorded |", "| --- | --- | --- |"]
    for name, shares in result["cpu"].items():
        counts = result["holds"][name]
        lines.append(f"| {name} | {100 * statistics.median(shares):.2f} % "
                     f"({100 * min(shares):.2f}, {100 * max(shares):.2f}) | "
                     f"{statistics.median(counts):.0f} |")
    p = result["passes"]
    lines += ["", f"A pass of a loop running one `await asyncio.sleep(0)`: {p['plain_us']:.2f} µs"
              f" without the pass timing, {p['timed_us']:.2f} µs with it (ratio "
              f"{p['timed_us'] / p['plain_us']:.3f}; medians of 7 interleaved rounds of 200,000"
              " passes)."]
    return "\n".join(lines)
