"""The status line and --verbose lines (pure), and where the terminal puts them."""

from __future__ import annotations

import io

from apiscope.collect.figures import WindowCounts
from apiscope.collect.status import Counters, Terminal, pull_text, status_line, window_text


def test_the_status_line_counts_samples_requests_and_processes() -> None:
    line = status_line(Counters(elapsed=3.04, samples=12345, requests=40, processes=2))
    assert line == "apiscope:   3.0s  samples 12,345  requests 40  processes 2"


def test_a_budget_shows_the_rate_it_holds() -> None:
    line = status_line(Counters(elapsed=10.0, samples=0, requests=0, processes=1, rate_hz=40,
                                max_overhead=2.0))
    assert line.endswith("processes 1  rate 40 Hz (budget 2%)")


def test_after_a_storage_failure_the_line_says_what_the_file_holds() -> None:
    line = status_line(Counters(elapsed=10.0, samples=9999, requests=99, processes=1,
                                committed=(1200, 34)))
    assert line == ("apiscope: session file failed; it holds 1,200 samples and 34 requests")


def test_verbose_lines() -> None:
    counts = WindowCounts(stored=90, errors=1, dropped=9, expected=100.0)
    assert window_text(2.5, 100, counts, 3) == (
        "window    2.5s  rate 100 Hz  samples 90 of 100 expected  errors 1  windows lost 3")
    assert pull_text(7, 4, 1, 0, True) == (
        "pull pid 7: 4 requests, 1 profiles, agent dropped 0 (more waiting)")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_redraws_the_line_in_place_and_ends_it_at_the_end() -> None:
    out = Tty()
    terminal = Terminal(out, verbosity=1)
    terminal.status("a")
    terminal.status("b", final=True)
    assert out.getvalue() == "\ra\rb\n"


def test_elsewhere_only_the_final_line_is_printed() -> None:
    out = io.StringIO()
    terminal = Terminal(out, verbosity=1)
    terminal.status("a")
    terminal.status("b", final=True)
    assert out.getvalue() == "b\n"


def test_quiet_prints_warnings_only_and_each_once() -> None:
    out = Tty()
    terminal = Terminal(out, verbosity=0)
    terminal.status("a", final=True)
    terminal.detail("detail")
    assert terminal.warn("disk full") and not terminal.warn("disk full")
    assert out.getvalue() == "\napiscope: warning: disk full\n"
    assert terminal.warnings == ["disk full"]


def test_verbose_prints_details_and_keeps_the_status_line_off_them() -> None:
    out = Tty()
    terminal = Terminal(out, verbosity=2)
    terminal.detail("window 1")
    terminal.status("a")
    terminal.status("b", final=True)
    assert out.getvalue() == "apiscope: window 1\nb\n"


def test_no_output_stream_prints_nothing() -> None:
    terminal = Terminal(None)
    assert terminal.warn("x")
    terminal.status("a", final=True)
