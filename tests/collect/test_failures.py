"""The failure log: per process, stored as it changes, told in the summary."""

from __future__ import annotations

from apiscope.collect.failures import FailureLog, detach_warning, failure_lines
from apiscope.collectors.injections import DetachFailure
from apiscope.collectors.samplerstats import SamplerStats


def test_nothing_wrong_means_no_entry_and_nothing_to_store() -> None:
    log = FailureLog()
    log.sampler(7, SamplerStats())
    log.agent_counters(8, internal=0, watchdog=0)
    assert log.entries() == [] and log.news() is None
    assert failure_lines([]) == []


def test_agent_errors_keep_the_agents_own_message() -> None:
    log = FailureLog()
    assert log.agent_error(8, "KeyError: 'route'")
    assert not log.agent_error(8, "RuntimeError: ring buffer closed")
    assert log.entries() == [{"pid": 8, "agent_errors": 2,
                              "agent_error": "RuntimeError: ring buffer closed"}]
    [line] = failure_lines(log.entries())
    assert "PID 8" in line and "2 pulls" in line and "RuntimeError: ring buffer closed" in line
    assert "no agent answers" not in line


def test_sampler_counts_go_on_the_sampled_process() -> None:
    log = FailureLog()
    stats = SamplerStats(dropped_windows=2, failed_windows=1, launch_retries=3,
                         last_failure="ValueError: bad line")
    log.sampler(7, stats)
    assert log.entries() == [{"pid": 7, "windows_dropped": 2, "windows_failed": 1,
                              "window_failure": "ValueError: bad line",
                              "sampler_retries": 3}]
    log.sampler(7, stats, stopped="py-spy crashed")
    assert log.entries()[0]["sampling_stopped"] == "py-spy crashed"
    lines = failure_lines(log.entries())
    assert any(line.startswith("warning: stack sampling of PID 7 stopped") for line in lines)
    assert any("failed to start 3 times on PID 7" in line for line in lines)


def test_the_agents_own_counters_are_kept_at_their_highest() -> None:
    log = FailureLog()
    log.agent_counters(8, internal=2, watchdog=None)
    log.agent_counters(8, internal=1, watchdog=4)  # a restarted agent counts from 0 again
    assert log.entries() == [{"pid": 8, "agent_internal_errors": 2, "watchdog_errors": 4}]
    [line] = failure_lines(log.entries())
    assert "2 in recording requests" in line and "4 in its loop and GIL watchdogs" in line


def test_a_failed_detach_names_the_retry_command() -> None:
    log = FailureLog()
    log.detach_failed([DetachFailure(9, "gdb timed out")])
    assert log.entries() == [{"pid": 9, "detach_failed": "gdb timed out",
                              "retry": "apiscope detach 9"}]
    assert detach_warning(9, "gdb timed out", "apiscope detach 9") == (
        "warning: the agent in PID 9 could not be detached (gdb timed out); retry with:"
        " apiscope detach 9")


def test_news_are_given_once_per_change() -> None:
    log = FailureLog()
    log.agent_error(8, "boom")
    first = log.news()
    assert first is not None and first[0]["agent_errors"] == 1
    assert log.news() is None
    log.sampler(7, SamplerStats(dropped_windows=1))
    log.sampler(7, SamplerStats(dropped_windows=1))
    news = log.news()
    assert news is not None and [e["pid"] for e in news] == [7, 8]
    assert log.news() is None
