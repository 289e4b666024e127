"""The worker set: who is pulled from, injected and detached as workers come and go."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from apiscope.collect.workers import STALE_AGE, WorkerSet, sweep_stale_sockets
from tests.collect.fakes import FakeClients, FakeInjections


def worker_set(injections: FakeInjections | None = None, inject: bool = True,
               alive: set[int] | None = None) -> tuple[WorkerSet, FakeClients, list[int]]:
    clients = FakeClients()
    removed: list[int] = []
    running = alive if alive is not None else set()
    workers = WorkerSet(injections=injections, inject=inject, clients=clients,
                        alive=lambda pid: pid in running, remove_socket=removed.append,
                        sweep=lambda: removed.append(-1) or 0)  # -1: the directory swept
    return workers, clients, removed


def test_each_worker_is_pulled_and_injected_once() -> None:
    injections = FakeInjections()
    workers, clients, _ = worker_set(injections)
    for pid in (11, 12, 11):
        workers.add(pid)
    assert workers.pulled == [11, 12]
    assert injections.added == [11, 12]
    assert sorted(clients.made) == [11, 12]


def test_without_injection_workers_are_only_pulled() -> None:
    """`attach --no-inject` and `run`: an agent may be there already; nothing is injected."""
    injections = FakeInjections()
    workers, _, _ = worker_set(injections, inject=False)
    workers.add(11)
    assert workers.pulled == [11] and injections.added == []
    assert workers.orphan_seconds is None
    assert workers.detach() == [] and injections.closed == 0


def test_an_exited_worker_is_no_longer_pulled_and_its_socket_is_cleaned() -> None:
    workers, clients, removed = worker_set(FakeInjections())
    workers.add(11)
    workers.add(12)
    workers.remove(11)
    assert workers.pulled == [12]
    assert clients.made[11].closed and not clients.made[12].closed
    assert removed == [11] and workers.exited == {11}


def test_workers_that_came_later_are_detached_too() -> None:
    injections = FakeInjections()
    workers, _, _ = worker_set(injections, alive={11, 13})
    workers.add(11)
    workers.add(12)  # recycled: exits during the run
    workers.remove(12)
    workers.add(13)  # its replacement
    assert workers.injected == {11, 12, 13}
    assert workers.detach() == []
    assert injections.closed == 1


def test_detach_happens_once_and_returns_the_failures_with_the_retry_command() -> None:
    injections = FakeInjections(fail={12: "ptrace: Operation not permitted"})
    workers, _, _ = worker_set(injections, alive={11, 12})
    workers.add(11)
    workers.add(12)
    failures = workers.detach()
    assert [(f.pid, f.reason, f.command) for f in failures] == [
        (12, "ptrace: Operation not permitted", "apiscope detach 12")]
    assert workers.detach() is failures and injections.closed == 1


def test_detach_cleans_up_the_sockets_of_processes_gone() -> None:
    workers, _, removed = worker_set(FakeInjections(), alive={11})
    workers.add(11)
    workers.add(12)
    workers.remove(12)
    removed.clear()
    workers.detach()
    assert removed == [12, -1]  # the live one keeps its socket; then the directory's sweep


def test_close_clients_closes_every_client() -> None:
    workers, clients, _ = worker_set()
    workers.add(11)
    workers.add(12)
    workers.close_clients()
    assert all(c.closed for c in clients.made.values())


def test_the_orphan_timeout_comes_from_the_injections() -> None:
    workers, _, _ = worker_set(FakeInjections(orphan_seconds=7.0))
    assert workers.orphan_seconds == 7.0


def test_a_directory_sweep_removes_only_old_sockets_nobody_listens_on(tmp_path: Path) -> None:
    """Processes killed with SIGKILL leave their agent's socket file behind: a socket
    directory grew to over a hundred of them. The sweep at each detach removes those, and
    nothing else."""
    def bound(name: str, listen: bool) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / name))
        if listen:
            sock.listen(1)
        return sock

    old = time.time() - STALE_AGE - 5
    dead = bound("agent-101.sock", listen=False)
    dead.close()  # the file stays, as a SIGKILL leaves it
    os.utime(tmp_path / "agent-101.sock", (old, old))
    young = bound("agent-102.sock", listen=False)  # bound, not listening yet: starting up
    young.close()
    live = bound("agent-103.sock", listen=True)
    os.utime(tmp_path / "agent-103.sock", (old, old))
    (tmp_path / "agent-104.sock").write_text("")  # not a socket: not ours to judge
    os.utime(tmp_path / "agent-104.sock", (old, old))
    other = bound("other-105.sock", listen=False)
    other.close()
    os.utime(tmp_path / "other-105.sock", (old, old))
    try:
        assert sweep_stale_sockets(str(tmp_path)) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "agent-102.sock", "agent-103.sock", "agent-104.sock", "other-105.sock"]
    finally:
        live.close()
    assert sweep_stale_sockets(str(tmp_path / "missing")) == 0


def test_detach_sweeps_the_socket_directory_once() -> None:
    workers, _, removed = worker_set(FakeInjections())
    workers.detach()
    workers.detach()
    assert removed.count(-1) == 1
