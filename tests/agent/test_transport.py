"""The agent's socket server: one thread serves every connection (and the periodic tick)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from apiscope.agent.transport import MAX_CLIENTS, AgentServer
from tests.support import wait_until


@contextmanager
def serving(sock_dir: str) -> Iterator[AgentServer]:
    server = AgentServer(f"{sock_dir}/a.sock", lambda request: {"echo": request.get("n")})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(server: AgentServer) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    conn.connect(server.path)
    return conn


def ask(conn: socket.socket, n: int) -> dict[str, object]:
    conn.sendall(json.dumps({"op": "x", "n": n}).encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = conn.recv(4096)
        assert chunk, "the server closed the connection"
        reply += chunk
    return dict(json.loads(reply))


def test_a_half_sent_request_holds_no_other_client_up(sock_dir: str) -> None:
    with serving(sock_dir) as server:
        slow, quick = connect(server), connect(server)
        with slow, quick:
            slow.sendall(b'{"op": "x", ')  # and nothing more for now
            assert ask(quick, 1) == {"echo": 1}
            slow.sendall(b'"n": 2}\n')  # the rest: answered as one request
            with slow.makefile("rb") as lines:
                assert json.loads(lines.readline()) == {"echo": 2}


def test_requests_in_one_packet_are_each_answered(sock_dir: str) -> None:
    with serving(sock_dir) as server, connect(server) as conn:
        conn.sendall(b'{"n": 1}\n{"n": 2}\nnot json\n')
        with conn.makefile("rb") as lines:
            replies = [json.loads(lines.readline()) for _ in range(3)]
        assert replies == [
            {"echo": 1}, {"echo": 2}, {"error": "bad request: Expecting value: line 1 column 1"
                                       " (char 0)"}]


def test_connections_beyond_the_cap_are_closed_and_the_server_serves_on(sock_dir: str) -> None:
    with serving(sock_dir) as server:
        kept = [connect(server) for _ in range(MAX_CLIENTS)]
        for n, conn in enumerate(kept):
            assert ask(conn, n) == {"echo": n}
        extra = connect(server)
        assert extra.recv(1) == b""  # closed at once
        extra.close()
        kept.pop().close()

        def answered() -> bool:  # a place is free again, once the server saw the close
            with connect(server) as again:
                try:
                    return ask(again, 9) == {"echo": 9}
                except (AssertionError, ConnectionError):
                    return False

        wait_until(answered, timeout=5, what="a free place")
        for conn in kept:
            conn.close()


def test_the_server_is_one_thread(sock_dir: str) -> None:
    before = {t.name for t in threading.enumerate()}
    with serving(sock_dir) as server:
        conns = [connect(server) for _ in range(3)]
        for n, conn in enumerate(conns):
            assert ask(conn, n) == {"echo": n}
        added = [t.name for t in threading.enumerate() if t.name not in before]
        assert added == ["apiscope-agent"]
        for conn in conns:
            conn.close()
