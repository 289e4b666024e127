"""The orchestrator, with every collaborator a fake: no server, no py-spy, no debugger."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from apiscope.collect.status import status_line
from apiscope.collection import Collection, CollectOptions
from apiscope.collectors.agent_client import AgentError, WatchdogReport
from apiscope.collectors.samplerstats import EndReason, ErrorWindow
from apiscope.model import Frame, LoopStall, StackSample, StackWindow, UnfinishedRequest
from tests.collect.fakes import (
    FakeClients,
    FakeInjections,
    FakeMetrics,
    FakeResources,
    FakeWriter,
    SamplerBox,
    agent_error,
    batch,
    stats,
    target,
)
from tests.support import FakeClock


class Rig:
    """A collection of a gunicorn master 1 with workers 11 and 12, and its fakes."""

    def __init__(self, *, inject: bool = True, fail_detach: dict[int, str] | None = None,
                 duration: float | None = 0.0) -> None:
        self.clock = FakeClock()
        self.writer = FakeWriter()
        self.metrics = FakeMetrics()
        self.clients = FakeClients()
        self.injections = FakeInjections(fail=fail_detach)
        self.resources = FakeResources([1, 11, 12])
        self.box = SamplerBox()
        self.out = io.StringIO()
        self.collection = Collection(
            target([11, 12], master=1), self.writer,  # type: ignore[arg-type]
            CollectOptions(duration=duration, inject=inject, poll_seconds=60.0),
            metrics=self.metrics, injections=self.injections, status=self.out,
            clock=self.clock, sampler=self.box, resources=self.resources,
            clients=self.clients)

    @property
    def sampler(self):  # type: ignore[no-untyped-def]
        assert self.box.sampler is not None
        return self.box.sampler


def window(pid: int, count: int) -> StackWindow:
    return StackWindow(start=0.0, end=1.0, rate_hz=100,
                       samples=(StackSample(pid, 1, "t", (Frame("f", "a.py", 1),), count),))


def test_start_stores_the_target_and_pulls_and_injects_each_worker() -> None:
    rig = Rig()
    rig.collection.start()
    assert rig.sampler.started
    assert rig.writer.meta["pids"] == [11, 12] and rig.writer.meta["master_pid"] == 1
    assert len(rig.writer.named("put_process")) == 2
    assert rig.collection.workers.pulled == [11, 12]
    assert rig.injections.added == [11, 12]
    rig.collection.stop()


def test_without_injection_no_worker_is_injected() -> None:
    rig = Rig(inject=False)
    rig.collection.start()
    assert rig.injections.added == [] and rig.collection.workers.pulled == [11, 12]
    rig.collection.stop()
    assert rig.collection.close_agents() == [] and rig.injections.closed == 0


def test_the_end_stores_each_agents_hung_requests_and_an_agent_that_cannot_tell_is_skipped(
        ) -> None:
    rig = Rig()
    rig.collection.start()
    hung = UnfinishedRequest(11, 1000.0, "GET", "/items/{item_id}", 9000.0, "Future (pending)",
                             (Frame("get_db", "/srv/app/db.py", 12),))
    rig.clients.made[11].stuck = [hung]
    rig.clients.made[12].stuck = AgentError("unknown op 'unfinished'")  # an older agent
    rig.collection.stop()
    assert rig.writer.named("put_unfinished") == [([hung],)]
    # Longer than the objective (200 ms by default), and a second at least.
    assert rig.clients.made[11].asked_unfinished == [1.0]
    assert rig.clients.made[12].asked_unfinished == [1.0] and rig.clients.made[12].closed


def test_windows_reach_the_session_and_the_metrics() -> None:
    rig = Rig()
    rig.collection.start()
    rig.sampler.deliver(window(11, 90))
    assert len(rig.writer.named("put_window")) == 1
    assert rig.metrics.named("observe_samples") == [(90, 0, 10)]
    rig.collection.stop()


def test_pulled_requests_are_counted_stored_and_observed() -> None:
    rig = Rig()
    rig.clients.scripts[11] = [batch(11, requests=3, more=True), batch(11, requests=2)]
    rig.collection.start()
    rig.collection.pull_agents()
    assert rig.collection.totals.requests == 5
    assert sum(len(args[0]) for args in rig.writer.named("put_requests")) == 5
    assert sum(len(args[0]) for args in rig.metrics.named("observe_requests")) == 5
    assert rig.clients.made[11].pulls == [10.0, 10.0]  # the orphan timeout, told every pull
    rig.collection.stop()


def test_the_routing_is_stored_when_it_changes_not_at_every_pull() -> None:
    rig = Rig()
    framework = {"source": "framework", "frameworks": ["fastapi"]}
    grouped = {"source": "inferred"}
    rig.clients.scripts[11] = [batch(11, routing=framework), batch(11, routing=dict(framework)),
                               batch(11, routing=grouped)]
    rig.collection.start()
    for _ in range(3):
        rig.collection.pull_agents()
    rig.collection.stop()
    stored = [values["routing"] for name, _, values in rig.writer.calls
              if name == "set_meta" and "routing" in values]
    assert stored == [framework, grouped]


def test_a_program_running_its_server_in_process_is_named_by_the_server_its_agent_found(
) -> None:
    rig = Rig()
    rig.collection.target = replace(rig.collection.target, server="python",
                                    command="python venv/bin/dagster-webserver -p 3000")
    rig.collection.start()
    rig.injections.servers = {"uvicorn"}
    rig.collection.stop()
    assert rig.writer.meta["server"] == "uvicorn"
    # Told by its command line, or two kinds found: as described.
    for described, found in (("gunicorn", {"uvicorn"}), ("python", {"uvicorn", "hypercorn"})):
        rig = Rig()
        rig.collection.target = replace(rig.collection.target, server=described)
        rig.collection.start()
        rig.injections.servers = found
        rig.collection.stop()
        assert rig.writer.meta["server"] == described


def test_requests_are_thinned_when_taking_them_in_costs_too_much() -> None:
    import dataclasses

    rig = Rig()
    kept = [dataclasses.replace(r, weight=4) for r in batch(11, requests=3).requests]
    rig.clients.scripts[11] = [dataclasses.replace(batch(11), requests=kept)]
    rig.collection.start()
    rig.collection.pull_agents()
    assert rig.collection.totals.requests == 12  # each kept record stands for 4
    assert rig.clients.made[11].keeps == [(1, 200.0)]  # all, and always those over the SLO
    assert rig.collection.keeping is not None
    # Storing 5,000 requests cost 5% of a core in a second, with a budget of 2% on 2 workers:
    # 2.5 times the share of requests (half the budget: 1% of a core per worker).
    monotonic = [1.0]
    rig.collection._monotonic = lambda: monotonic[0]
    rig.collection.adjust_keeping()
    monotonic[0] = 2.0
    rig.writer.request_cpu = 0.05
    rig.collection._kept += 5000
    rig.collection.totals.requests += 5000
    rig.collection.adjust_keeping()
    assert rig.collection.keeping.every == 3
    assert rig.writer.meta["requests_kept_every"] == 3
    rig.collection.pull_agents()
    assert rig.clients.made[11].keeps[-1] == (3, 200.0)
    assert "(1 in 3 kept)" in status_line(rig.collection.counters())
    rig.collection.stop()


def test_the_agents_watchdogs_get_less_to_follow_with_while_over_budget() -> None:
    from apiscope.agent.loopwatch import FOLLOW_CPU_SHARE
    from apiscope.collectors.budget import OverheadBudget, WindowCost

    rig = Rig()
    budget = rig.sampler.budget = OverheadBudget(0.02, requested_rate=100)
    rig.clients.scripts[11] = [batch(11), batch(11), batch(11)]
    rig.collection.start()
    rig.collection.pull_agents()
    rig.collection.adjust_watch_share()  # no window accounted yet: the agents' own default
    rig.collection.pull_agents()
    # A window over budget at the lowest rate: the next pulls carry half the default.
    budget.observe(WindowCost(seconds=8.0, rate_hz=5, pyspy_cpu=0.2, agent_cpu=0.2,
                                      collector_cpu=0.2, capacity=2.0))
    rig.collection.adjust_watch_share()
    rig.collection.pull_agents()
    assert rig.clients.made[11].watch_shares == [None, None, FOLLOW_CPU_SHARE / 2]
    assert rig.writer.meta["watch_share"] == FOLLOW_CPU_SHARE / 2
    assert rig.sampler.look_intervals == [0.08]  # the looks for GIL waits, half as often
    # The profiles' sampled slices: a quarter of the 2 % budget, cut with the watchdogs'.
    assert rig.clients.made[11].profile_shares == [0.005, 0.005, 0.0025]
    rig.collection.stop()


def test_what_the_agents_profiles_spent_is_paid_from_the_budget() -> None:
    rig = Rig()
    rig.clients.scripts[11] = [
        batch(11, profiling={"spent_seconds": 0.25}),
        batch(11, profiling={"spent_seconds": 0.75}),  # the agent's total so far
        batch(11, profiling={"unavailable": "no pyinstrument"})]  # an older agent says none
    rig.collection.start()
    before = rig.collection._agents_cpu()
    rig.collection.pull_agents()
    assert rig.collection._agents_cpu() == pytest.approx(before + 0.25)
    rig.collection.pull_agents()
    rig.collection.pull_agents()
    assert rig.collection._agents_cpu() == pytest.approx(before + 0.75)
    assert rig.writer.meta["profile_seconds"] == {"11": 0.75}  # kept in the session
    rig.collection.stop()


def test_workers_that_come_and_go_are_followed() -> None:
    rig = Rig()
    rig.collection.start()
    rig.resources.exit(12)
    rig.resources.spawn(13, ppid=1)
    rig.clock.advance(5.0)
    rig.collection.collect_resources()
    assert rig.collection.workers.pulled == [11, 13]
    assert rig.injections.added == [11, 12, 13]
    assert rig.writer.named("mark_exited") == [(12, 1005.0)]
    assert rig.metrics.named("forget_process") == [(12,)]
    assert rig.clients.made[12].closed
    assert not rig.collection.target_gone
    rig.resources.exit(1)
    rig.resources.exit(11)
    rig.resources.exit(13)
    rig.collection.collect_resources()
    assert rig.collection.target_gone
    rig.collection.stop()


def test_an_agent_error_is_reported_in_the_agents_words_and_stored() -> None:
    rig = Rig()
    rig.clients.scripts[11] = [agent_error("KeyError: 'route'"), agent_error("KeyError: 'x'")]
    rig.collection.start()
    rig.collection.pull_agents()
    rig.collection.pull_agents()
    rig.collection.stop()
    assert rig.writer.meta["target_failures"] == [
        {"pid": 11, "agent_errors": 2, "agent_error": "KeyError: 'x'"}]
    out = rig.out.getvalue()
    assert out.count("the agent in PID 11 answered a pull with an error: KeyError: 'route'") == 1
    assert "no agent answers" not in out


def test_an_absent_agent_is_no_failure() -> None:
    rig = Rig()
    rig.collection.start()
    rig.collection.pull_agents()  # the fake clients refuse: nothing injected yet
    rig.collection.stop()
    assert "target_failures" not in rig.writer.meta and rig.out.getvalue() == ""


def test_the_agents_own_error_counters_are_stored() -> None:
    rig = Rig()
    rig.clients.scripts[12] = [batch(12, stats=stats(12, errors=3))]
    rig.collection.start()
    rig.collection.pull_agents()
    rig.collection.stop()
    assert rig.writer.meta["target_failures"] == [{"pid": 12, "agent_internal_errors": 3}]


def test_the_agents_loop_stalls_reach_the_sampler() -> None:
    # What the watchdog measured the loop doing tells the sampler which lines sleep.
    stall = LoopStall(11, 1, 5.0, 40.0, (Frame("audit", "app.py", 23),), 1.0, {"sleep": 4})
    rig = Rig()
    rig.clients.scripts[11] = [batch(11, watchdogs=WatchdogReport(
        stalls=[stall], lag=[], gil=None, cpu_seconds=0.1, errors=0))]
    rig.collection.start()
    rig.collection.pull_agents()
    rig.collection.stop()
    assert rig.sampler.stalls == [stall]
    assert len(rig.writer.named("put_loop_stalls")) == 1


def test_lost_windows_are_stored_on_the_sampled_process() -> None:
    rig = Rig()
    rig.collection.start()
    rig.sampler.stats.dropped_windows = 1
    rig.sampler.stats.failed_windows = 2
    rig.sampler.stats.last_failure = "ValueError: no trace"
    rig.collection.stop()
    assert rig.writer.meta["windows_dropped"] == 1 and rig.writer.meta["windows_failed"] == 2
    assert rig.writer.meta["target_failures"] == [
        {"pid": 1, "windows_dropped": 1, "windows_failed": 2,
         "window_failure": "ValueError: no trace"}]


def test_reads_failed_while_the_injection_held_a_worker_are_not_sampling_errors() -> None:
    rig = Rig()
    rig.collection.start()
    stats = rig.sampler.stats
    # 60 failed reads in a 100 Hz window that the debugger's 0.4 s run in worker 11 overlapped
    # for 0.3 s (30 reads of that worker), 4 in a later window that no debugger run overlapped.
    stats.errors = 64
    stats.error_windows = [ErrorWindow(1000.0, 1002.0, 100, 60),
                           ErrorWindow(1010.0, 1018.0, 5, 4)]
    rig.injections.pauses = [(1001.7, 1002.1)]
    rig.collection.stop()
    assert rig.writer.meta["samples_errors"] == 34
    assert rig.writer.meta["samples_paused"] == 30


def test_sampling_that_failed_is_stored_with_its_error() -> None:
    rig = Rig()
    rig.collection.start()
    rig.sampler.end_reason = EndReason.FAILED
    rig.sampler.error = RuntimeError("py-spy crashed")
    rig.collection.run_until_done()
    assert rig.writer.meta["target_failures"] == [
        {"pid": 1, "sampling_stopped": "py-spy crashed"}]


def test_a_failed_detach_is_stored_for_the_report_once() -> None:
    rig = Rig(fail_detach={12: "gdb: ptrace refused"})
    rig.collection.start()
    rig.collection.run_until_done()
    failures = rig.collection.close_agents()
    assert [(f.pid, f.command) for f in failures] == [(12, "apiscope detach 12")]
    assert rig.collection.close_agents() == failures and rig.injections.closed == 1
    assert rig.writer.meta["detach_failed"] == [
        {"pid": 12, "reason": "gdb: ptrace refused", "retry": "apiscope detach 12"}]
    assert rig.writer.meta["target_failures"] == [
        {"pid": 12, "detach_failed": "gdb: ptrace refused", "retry": "apiscope detach 12"}]


def test_the_run_ends_at_the_duration_and_stores_its_end() -> None:
    rig = Rig(duration=0.0)
    rig.collection.start()
    rig.clock.advance(2.5)
    rig.collection.run_until_done()
    assert rig.sampler.stopped and rig.writer.meta["end"] == 1002.5
    assert rig.writer.flushed == 1
    assert rig.out.getvalue().startswith("apiscope:   2.5s  samples 0  requests 0  processes 3")
    assert all(c.closed for c in rig.clients.made.values())


def test_a_storage_failure_ends_the_run_and_the_line_says_what_the_file_holds() -> None:
    rig = Rig(duration=None)
    rig.collection.start()
    rig.writer.failure = "disk full"
    rig.writer.committed_samples = 120
    rig.collection.run_until_done()
    assert rig.collection.storage_failure == "disk full"
    out = rig.out.getvalue()
    assert "the session file can no longer be written (disk full)" in out
    assert "session file failed; it holds 120 samples and 0 requests" in out
    assert rig.writer.flushed == 0


def test_stop_before_start_does_nothing() -> None:
    rig = Rig()
    rig.collection.stop()
    assert rig.writer.calls == []


@pytest.mark.parametrize("verbosity", [0, 2])
def test_verbosity_reaches_the_terminal(verbosity: int) -> None:
    rig = Rig()
    rig.collection.options.verbosity = verbosity
    rig.collection.terminal.verbosity = verbosity
    rig.collection.start()
    rig.sampler.deliver(window(11, 90))
    rig.collection.stop()
    assert ("apiscope: window" in rig.out.getvalue()) == (verbosity == 2)
