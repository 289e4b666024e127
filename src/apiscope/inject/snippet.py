"""The few lines of Python that injection hands to the target's interpreter.

They only run `payload.py` from apiscope's files; everything else lives in real modules. The
snippet swallows every exception: it runs as a pending call (or a remote_exec script), and an
error escaping it would be raised as a SystemError inside whatever the main thread was doing,
the server's event loop included (and a SystemExit would end the process).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from apiscope.inject.payload import PAYLOAD_NAME

PAYLOAD_FILE = Path(__file__).resolve().with_name("payload.py")
AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"


@dataclass(frozen=True)
class InjectArgs:
    """What the payload needs: what to do, where the agent is, where to report."""

    action: str  # "attach" or "detach"
    directory: str  # the agent socket directory, which also holds the status file
    result: str  # the status file the injector waits for
    token: str  # tells this injection's status from a stale one
    agent_dir: str = str(AGENT_DIR)
    payload: str = str(PAYLOAD_FILE)


def build_snippet(args: InjectArgs) -> str:
    """Python source for `PyRun_SimpleString`/`sys.remote_exec`; every value is a literal."""
    payload_args = {"action": args.action, "directory": args.directory,
                    "result": args.result, "token": args.token, "agent_dir": args.agent_dir}
    namespace = {"__name__": PAYLOAD_NAME, "APISCOPE_ARGS": payload_args}
    source = (
        "try:\n"
        f"    exec(compile(__import__('pathlib').Path({args.payload!r}).read_bytes(),"
        f" {args.payload!r}, 'exec'), {namespace!r})\n"
        "except BaseException:\n"
        "    pass\n"
    )
    compile(source, "<apiscope-inject>", "exec")  # a typo here must fail here, not in the server
    return source


def c_string_literal(text: str) -> tuple[str, int]:
    """`text` as a C string literal for gdb, and its size in bytes with the final NUL.

    Anything outside printable ASCII becomes a three-digit octal escape, which cannot run into
    the character after it the way `\\x` escapes can.
    """
    data = text.encode("utf-8")
    parts = []
    for byte in data:
        char = chr(byte)
        if char in '"\\':
            parts.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            parts.append(char)
        else:
            parts.append(f"\\{byte:03o}")
    return '"' + "".join(parts) + '"', len(data) + 1
