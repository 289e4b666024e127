"""pprof's `profile.proto`, gzipped, as `go tool pprof`, Grafana Pyroscope and other
continuous-profiling back ends read it.

The message layout is google/pprof's `proto/profile.proto`; the few wire-format rules it needs
(varints, length-delimited fields, packed repeated integers) are written out here rather than
pulling in a protobuf runtime for one message.

What goes in:
- three sample types: `samples/count` (the same counts as every other format), `cpu/nanoseconds`
  (the RUNNING samples: on a CPU as the kernel measured it) and `wall/nanoseconds` (all of
  them), each sample worth one sampling period (1 s / the session's rate);
- one location per distinct frame (function, file, executing line) and one function per
  (name, file); sample stacks are leaf first, as the format wants;
- labels `route` (the endpoint whose handler runs in the stack, as the report attributes it,
  `GET /items/{item_id}`), `pid`, `thread` (the thread id) and `thread_name`.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from apiscope import __version__
from apiscope.exporters.base import Profile, thread_frames
from apiscope.exporters.folded import NO_FRAMES
from apiscope.model import Frame, SampleState, StackSample

SAMPLE_TYPES = (("samples", "count"), ("cpu", "nanoseconds"), ("wall", "nanoseconds"))
DEFAULT_SAMPLE_TYPE = "wall"  # what the other formats draw by default: every sample kept
DEFAULT_RATE_HZ = 100

Labels = tuple[tuple[str, str], ...]


# -- protobuf wire format ---------------------------------------------------------------------

def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 fields encode negatives as ten-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    """A varint field; zero is the default and is left out, as protobuf encoders do."""
    return _varint(number << 3) + _varint(value) if value else b""


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _packed_field(number: int, values: Iterable[int]) -> bytes:
    payload = b"".join(_varint(v) for v in values)
    return _bytes_field(number, payload) if payload else b""


# -- the profile's tables ---------------------------------------------------------------------

@dataclass(slots=True)
class _Tables:
    """The string, function and location tables, filled as samples are added."""

    strings: dict[str, int] = field(default_factory=lambda: {"": 0})
    functions: dict[tuple[str, str], int] = field(default_factory=dict)
    locations: dict[Frame, int] = field(default_factory=dict)

    def string(self, text: str) -> int:
        index = self.strings.get(text)
        if index is None:
            index = self.strings[text] = len(self.strings)
        return index

    def location(self, frame: Frame) -> int:
        found = self.locations.get(frame)
        if found is None:
            key = (frame.function, frame.file)
            if key not in self.functions:
                self.functions[key] = len(self.functions) + 1
                self.string(frame.function)
                self.string(frame.file)
            found = self.locations[frame] = len(self.locations) + 1
        return found

    def encode(self) -> bytes:
        out = bytearray()
        for (name, file), fid in self.functions.items():
            out += _bytes_field(5, _int_field(1, fid) + _int_field(2, self.strings[name])
                                + _int_field(3, self.strings[name])
                                + _int_field(4, self.strings[file]))
        for frame, lid in self.locations.items():
            line = (_int_field(1, self.functions[(frame.function, frame.file)])
                    + _int_field(2, frame.line))
            out += _bytes_field(4, _int_field(1, lid) + _int_field(2, 1)
                                + _bytes_field(4, line))
        return bytes(out)


def _sample_key(profile: Profile, sample: StackSample) -> tuple[tuple[Frame, ...], Labels]:
    frames = sample.frames or (NO_FRAMES,)
    if profile.threads:
        frames = (*thread_frames(sample), *frames)
    labels: list[tuple[str, str]] = []
    route = profile.endpoint_of(sample.frames) if profile.endpoint_of else None
    if route is not None:
        labels.append(("route", route))
    labels += [("pid", str(sample.pid)), ("thread", str(sample.tid))]
    if sample.thread_name:
        labels.append(("thread_name", sample.thread_name))
    return frames, tuple(labels)


def _aggregate(profile: Profile, period: int) -> dict[tuple[tuple[Frame, ...], Labels],
                                                        list[int]]:
    """samples, cpu ns and wall ns per distinct (stack, labels)."""
    out: dict[tuple[tuple[Frame, ...], Labels], list[int]] = {}
    for sample in profile.samples:
        if sample.count <= 0:
            continue
        key = _sample_key(profile, sample)
        values = out.setdefault(key, [0, 0, 0])
        values[0] += sample.count
        if sample.state is SampleState.RUNNING:
            values[1] += sample.count * period
        values[2] += sample.count * period
    return out


def _encode_sample(tables: _Tables, frames: Sequence[Frame], labels: Labels,
                   values: Sequence[int]) -> bytes:
    body = _packed_field(1, [tables.location(f) for f in reversed(frames)])  # leaf first
    body += _packed_field(2, values)
    for key, text in labels:
        body += _bytes_field(3, _int_field(1, tables.string(key))
                             + _int_field(2, tables.string(text)))
    return _bytes_field(2, body)


def _value_type(tables: _Tables, kind: str, unit: str) -> bytes:
    return _int_field(1, tables.string(kind)) + _int_field(2, tables.string(unit))


def encode_profile(profile: Profile) -> bytes:
    """The uncompressed `profile.proto` message of `profile`."""
    period = round(1e9 / (profile.rate_hz or DEFAULT_RATE_HZ))
    tables = _Tables()
    head = b"".join(_bytes_field(1, _value_type(tables, kind, unit))
                    for kind, unit in SAMPLE_TYPES)
    samples = b"".join(_encode_sample(tables, frames, labels, values)
                       for (frames, labels), values in sorted(_aggregate(profile, period).items(),
                                                              key=_order))
    # One mapping for the interpreter: without it pprof would try to symbolize the addresses.
    mapping = _bytes_field(3, _int_field(1, 1) + _int_field(5, tables.string("python"))
                           + _int_field(7, 1) + _int_field(8, 1) + _int_field(9, 1))
    start, seconds = profile.span or (0.0, 0.0)
    tail = (_int_field(9, int(start * 1e9)) + _int_field(10, int(seconds * 1e9))
            + _bytes_field(11, _value_type(tables, "wall", "nanoseconds"))
            + _int_field(12, period)
            + _packed_field(13, [tables.string(f"apiscope {__version__}: {profile.title}")])
            + _int_field(14, tables.string(DEFAULT_SAMPLE_TYPE)))
    tables_bytes = tables.encode()  # after every string is interned
    strings = b"".join(_bytes_field(6, text.encode("utf-8")) for text in tables.strings)
    return head + samples + mapping + tables_bytes + strings + tail


def _order(item: tuple[tuple[tuple[Frame, ...], Labels], list[int]]) -> tuple[object, ...]:
    (frames, labels), _ = item
    return labels, [(f.function, f.file, f.line) for f in frames]


def render_pprof(profile: Profile) -> bytes:
    # mtime=0: exporting the same slice twice gives the same bytes
    return gzip.compress(encode_profile(profile), mtime=0)


class PprofRenderer:
    name = "pprof"
    suffix = ".pb.gz"

    def render(self, profile: Profile) -> bytes:
        return render_pprof(profile)
