"""What every subcommand shares: the Command protocol and the collecting options."""

from __future__ import annotations

import argparse
from typing import Protocol


class Command(Protocol):
    """One subcommand: it describes its options and runs, returning the exit code."""

    name: str
    help: str

    def prepare_parser(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


# py-spy reads every thread's stack out of the target's memory at each sample: beyond about
# 1000 per second it cannot keep up (at 100,000 Hz it kept 0.7 % of the samples asked for) and
# its cost to the server grows with the rate (docs/benchmarks.md).
MAX_RATE_HZ = 1000


def sampling_rate(text: str) -> int:
    value = positive_int(text)
    if value > MAX_RATE_HZ:
        raise argparse.ArgumentTypeError(
            f"{text} Hz is more than py-spy can sample: at most {MAX_RATE_HZ} samples per"
            " second (100, the default, is what production profiling usually needs)")
    return value


def overhead_percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percentage between 0 and 100")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """`--config PATH`: the thresholds file (`analysis.thresholds.resolve_thresholds`)."""
    parser.add_argument(
        "--config", metavar="PATH",
        help="TOML file whose [thresholds] table overrides the rules' defaults (default: the"
             " [tool.apiscope.thresholds] or [tool.apiscope] table of the nearest"
             " pyproject.toml; see docs/analysis.md)")


def add_collect_options(parser: argparse.ArgumentParser, *, inject: bool = False) -> None:
    """The options every collecting command (attach, run, demo) takes."""
    group = parser.add_argument_group("collection")
    group.add_argument("--duration", type=positive_float, metavar="SECONDS",
                       help="stop after this many seconds (default: until Ctrl-C)")
    group.add_argument("--rate", type=sampling_rate, default=100, metavar="HZ",
                       help=f"stack samples per second, at most {MAX_RATE_HZ} (default: 100)")
    group.add_argument("--max-overhead", type=overhead_percent, default=2.0, metavar="PERCENT",
                       help="the most of the target's capacity apiscope may take; the sampling"
                       " rate adapts window by window to stay within it (default: 2; 0: always"
                       " sample at --rate)")
    group.add_argument("--session", metavar="PATH",
                       help="session file to write (default: apiscope-<time>.sqlite)")
    group.add_argument("--nonblocking", action="store_true",
                       help="sample without pausing the target (cheaper, loses some samples)")
    group.add_argument("--slo-ms", type=positive_float, default=None, metavar="MS",
                       help="latency objective; p95 above it is flagged (default: the"
                       " thresholds' slo_ms, else 200)")
    group.add_argument("--report", metavar="PATH",
                       help="write the report at the end (.json or .html by suffix)")
    if inject:
        group.add_argument("--no-inject", action="store_true",
                           help="stacks and resources only: do not inject the latency agent")
    add_config_option(parser)
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="print only warnings, errors and the flags found at the end")
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="also print each sampling window (rate, samples, windows lost) and"
                      " each agent pull")
    out = parser.add_argument_group("dashboard and metrics")
    out.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    out.add_argument("--host", default="127.0.0.1",
                     help="address the dashboard and /metrics listen on (default: 127.0.0.1)")
    out.add_argument("--port", type=port, default=8050,
                     help="dashboard port, also serving /metrics (default: 8050)")
    out.add_argument("--metrics-port", type=port, metavar="PORT",
                     help="serve /metrics on this port (for headless use with --no-dashboard)")
