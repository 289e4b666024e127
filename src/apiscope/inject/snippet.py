"""The few lines of Python that injection hands to the target's interpreter.

They only run `payload.py`; everything else lives in real modules. A target that can read
apiscope's files (our user, our mount namespace) is given their paths. A *foreign* one (another
user's server, a container: see `rendezvous`) is sent the code itself: the payload's and the
agent package's sources, compressed, as literals of the snippet (about 55 kB), and the payload
imports the agent from them without a file. The snippet swallows every exception: it runs as a
pending call (or a remote_exec script), and an error escaping it would be raised as a
SystemError inside whatever the main thread was doing, the server's event loop included (and a
SystemExit would end the process).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sysconfig
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from apiscope.inject.payload import EMBEDDED_PREFIX, PAYLOAD_NAME

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
    embed: bool = False  # send the code instead of the paths above (a foreign target)
    # apiscope's own pyinstrument may be offered to a target that can reach our files
    offer_pyinstrument: bool = True


def build_snippet(args: InjectArgs) -> str:
    """Python source for `PyRun_SimpleString`/`sys.remote_exec`; every value is a literal."""
    payload_args: dict[str, object] = {"action": args.action, "directory": args.directory,
                                       "result": args.result, "token": args.token,
                                       "agent_dir": args.agent_dir}
    own = own_pyinstrument() if args.offer_pyinstrument else None
    if own is not None:
        payload_args["pyinstrument"] = own
    if args.embed:
        payload_args["agent_sources"] = _packed(AGENT_DIR)
        filename = EMBEDDED_PREFIX + "inject/payload.py"
        code = (f"__import__('zlib').decompress(__import__('base64').b64decode("
                f"{_packed_file(Path(args.payload))!r}))")
    else:
        filename = args.payload
        code = f"__import__('pathlib').Path({args.payload!r}).read_bytes()"
    namespace = {"__name__": PAYLOAD_NAME, "APISCOPE_ARGS": payload_args}
    source = (
        "try:\n"
        f"    exec(compile({code}, {filename!r}, 'exec'), {namespace!r})\n"
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


@cache
def _packed(package: Path) -> str:
    """The package's modules as base64 of zlib of JSON `{module name: source}`."""
    sources = {path.stem: path.read_text(encoding="utf-8")
               for path in sorted(package.glob("*.py"))}
    return base64.b64encode(zlib.compress(json.dumps(sources).encode(), 9)).decode("ascii")


@cache
def _packed_file(path: Path) -> str:
    return base64.b64encode(zlib.compress(path.read_bytes(), 9)).decode("ascii")


@cache
def own_pyinstrument() -> dict[str, str] | None:
    """Where apiscope's pyinstrument lives and the ABI its C extension was built for."""
    spec = importlib.util.find_spec("pyinstrument")
    soabi = sysconfig.get_config_var("SOABI")
    if spec is None or not spec.submodule_search_locations or not soabi:
        return None
    package = list(spec.submodule_search_locations)[0]
    return {"path": os.path.dirname(package), "soabi": str(soabi)}
