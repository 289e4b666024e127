"""Where the functions the injection calls are in a live process, found without stopping it.

gdb stops the target from the moment it attaches until it detaches, and finding a symbol is
most of that time: `sharedlibrary libc` and `sharedlibrary libpython` read two symbol tables
while every thread of the server waits (about 100 ms of a 150-200 ms stop on a 2-core VM).
The dynamic symbol tables can as well be read before gdb starts, from the files the process has
mapped (`/proc/PID/maps`, through `/proc/PID/root` so that a container's files are its own),
and the addresses handed to gdb as numbers.

A wrong address would make gdb call into the middle of some function of the server, so every
address is checked before it is used: the first bytes of the function in the target's memory
(`/proc/PID/mem`) must be the bytes of that symbol in the file. Anything unexpected (not a
64-bit little-endian ELF, a deleted file, no access, a mismatch) gives `None`, and the injection
lets gdb look the symbols up itself, as it always could.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

WANTED = ("Py_AddPendingCall", "PyRun_SimpleString", "mmap")
CHECKED_BYTES = 16

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_ET_EXEC = 2
_PT_LOAD = 1
_SHT_DYNSYM = 11
_STT_FUNC = 2
_PAGE = 4096


@dataclass(frozen=True)
class Functions:
    """Run-time addresses in the target of the three functions the gdb script calls."""

    add_pending_call: int
    run_simple_string: int
    mmap: int


@dataclass(frozen=True)
class _Load:
    offset: int
    vaddr: int
    filesz: int


def find_functions(pid: int) -> Functions | None:
    """The addresses of `WANTED` in `pid`, each checked against its file; `None` if unsure."""
    try:
        mapped = _mapped_files(pid)
        found: dict[str, int] = {}
        for path, start in mapped:
            missing = [name for name in WANTED if name not in found]
            if not missing:
                break
            with open(f"/proc/{pid}/root{path}", "rb") as elf:
                found.update(_addresses(elf, start, missing, pid))
        if any(name not in found for name in WANTED):
            return None
        return Functions(found["Py_AddPendingCall"], found["PyRun_SimpleString"],
                         found["mmap"])
    except (OSError, ValueError, struct.error):
        return None


def _mapped_files(pid: int) -> list[tuple[str, int]]:
    """Each ELF the process mapped, with the address its file offset 0 is mapped at, in the
    order the dynamic linker searches them (the executable first, then libraries as loaded):
    only the executable, libpython and the C library can hold what we look for."""
    exe = os.readlink(f"/proc/{pid}/exe")
    starts: dict[str, int] = {}
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or int(fields[2], 16) != 0:
                continue
            path = fields[5].rstrip("\n")
            if path.startswith("/") and not path.endswith(" (deleted)"):
                starts.setdefault(path, int(fields[0].split("-")[0], 16))
    wanted = [path for path in starts if path == exe or _library_of_interest(path)]
    return sorted(((path, starts[path]) for path in wanted), key=lambda item: item[0] != exe)


def _library_of_interest(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.startswith(("libpython", "libc.so", "libc-", "ld-musl"))


def _addresses(elf: BinaryIO, start: int, names: list[str], pid: int) -> dict[str, int]:
    header = elf.read(64)
    if (header[:4] != _ELF_MAGIC or header[4] != _ELFCLASS64
            or header[5] != _ELFDATA2LSB):
        return {}
    e_type = struct.unpack_from("<H", header, 16)[0]
    phoff, shoff = struct.unpack_from("<QQ", header, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 54)
    loads = _program_headers(elf, phoff, phentsize, phnum)
    if not loads:
        return {}
    first = min(loads, key=lambda load: load.offset)
    base = 0 if e_type == _ET_EXEC else start - (first.vaddr - first.offset) // _PAGE * _PAGE
    values = _dynamic_symbols(elf, shoff, shentsize, shnum, set(names))
    found = {}
    for name, value in values.items():
        address = base + value
        if _same_code(elf, loads, value, pid, address):
            found[name] = address
    return found


def _program_headers(elf: BinaryIO, offset: int, size: int, count: int) -> list[_Load]:
    elf.seek(offset)
    table = elf.read(size * count)
    loads = []
    for i in range(count):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", table, i * size)
        if p_type == _PT_LOAD:
            loads.append(_Load(p_offset, p_vaddr, p_filesz))
    return loads


def _dynamic_symbols(elf: BinaryIO, offset: int, size: int, count: int,
                     names: set[str]) -> dict[str, int]:
    """The values of the defined functions among `names` in the file's `.dynsym`."""
    elf.seek(offset)
    table = elf.read(size * count)
    sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * size) for i in range(count)]
    found: dict[str, int] = {}
    for _name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link, _info, _align, entsize \
            in sections:
        if sh_type != _SHT_DYNSYM or not entsize or sh_link >= len(sections):
            continue
        strings_offset, strings_size = sections[sh_link][4], sections[sh_link][5]
        elf.seek(strings_offset)
        strings = elf.read(strings_size)
        elf.seek(sh_offset)
        symbols = elf.read(sh_size)
        for at in range(0, len(symbols) - entsize + 1, entsize):
            st_name, st_info, _other, st_shndx, st_value = struct.unpack_from(
                "<IBBHQ", symbols, at)
            if st_shndx == 0 or st_info & 0xF != _STT_FUNC or not st_value:
                continue
            end = strings.find(b"\0", st_name)
            name = strings[st_name:end].decode("ascii", "replace")
            if name in names:
                found.setdefault(name, st_value)
    return found


def _same_code(elf: BinaryIO, loads: list[_Load], value: int, pid: int, address: int) -> bool:
    """The function's first bytes in the target's memory are the file's at that symbol."""
    for load in loads:
        if load.vaddr <= value < load.vaddr + load.filesz:
            elf.seek(load.offset + value - load.vaddr)
            expected = elf.read(CHECKED_BYTES)
            break
    else:
        return False
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            found = mem.read(CHECKED_BYTES)
    except OSError:  # not mapped there
        return False
    return len(expected) == CHECKED_BYTES and found == expected
