"""Per-request database query capture.

The middleware puts a fresh `RequestQueries` into `CURRENT` for each request; the hooks below
add every statement the request runs to it, keyed by its normalized text. Hooks installed:

- SQLAlchemy: the dialects' `do_execute`/`do_execute_no_params`/`do_executemany`, which every
  engine calls with each statement, on any driver, the async engines included (their sync
  engine runs inside a greenlet).
- Django ORM: an execute wrapper on every connection (`django_queries`), any database.
- psycopg 3: `Cursor.execute`/`executemany` and their `AsyncCursor` twins, for code that uses
  psycopg directly (Django and SQLAlchemy on psycopg are counted by their own hooks).
- asyncpg: `Connection._execute`/`_executemany`/`execute` wrappers, when asyncpg is importable;
  what its pool runs to reset a connection it takes back is the driver's, not counted.
- aiosqlite: `Connection.execute`/`execute_fetchall` and `Cursor.execute` wrappers.
- sqlite3 cannot be hooked: its Connection and Cursor are C types whose methods can't be
  replaced, so raw sqlite3 queries are only visible when they go through SQLAlchemy.

Connections a request opens are counted and timed too, as a statement of their own
(`connection_label`): `asyncpg.connect`, `psycopg.connect` and `psycopg2.connect`, which the
ORMs call too (SQLAlchemy's pool, Django's backends). An app that opens a connection per query
(no pool, SQLAlchemy's `NullPool`, Django's default `CONN_MAX_AGE = 0`) pays the handshake
(and the server's new backend process) in every request.

When SQLAlchemy or Django drives asyncpg, psycopg or aiosqlite, the driver wrappers see the same
statements; they skip while an ORM execution is in progress, so nothing is counted twice.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import time
from asyncio import base_events, events, runners
from collections.abc import Callable
from contextvars import ContextVar
from types import FrameType
from typing import Any

from .patching import replace
from .paths import AppFiles
from .recorder import QueryEntry

CURRENT: ContextVar[RequestQueries | None] = ContextVar("apiscope_queries", default=None)

CONNECTION = "(new connection) "  # + the driver: the statement a connect is counted as
# The files of asyncio's event loop and runner: a callback or a task's step runs below them,
# and nothing of a request above them.
_LOOP_FILES = frozenset(m.__file__ for m in (base_events, events, runners) if m.__file__)


def connection_label(driver: str) -> str:
    return CONNECTION + driver


def is_connection(statement: str) -> bool:
    """True for the statement standing for connections opened (`connection_label`)."""
    return statement.startswith(CONNECTION)


def connection_driver(statement: str) -> str:
    """The driver a `connection_label` names."""
    return statement[len(CONNECTION):]


_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_PLACEHOLDER = re.compile(r"\$\d+|%\(\w+\)s|%s")
_IN_LIST = re.compile(r"\bIN\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def normalize(statement: str) -> str:
    """Literals, placeholders and IN-lists become `?`; whitespace is collapsed."""
    text = _STRING.sub("?", statement)
    text = _PLACEHOLDER.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _IN_LIST.sub("IN (?)", text)
    return _SPACE.sub(" ", text).strip()


class StatementNormalizer:
    """`normalize` with a bounded cache: ORM statements repeat verbatim, so most calls hit."""

    def __init__(self, limit: int = 2048) -> None:
        # Read directly by `QueryHooks.add`: cleared when full, never replaced.
        self.cache: dict[str, str] = {}
        self._limit = limit

    def __call__(self, statement: str) -> str:
        found = self.cache.get(statement)
        if found is None:
            found = normalize(statement)
            if len(self.cache) >= self._limit:
                self.cache.clear()
            self.cache[statement] = found
        return found


class RequestQueries:
    """The statements of one request: normalized text -> [count, seconds, file, line]."""

    __slots__ = ("stats", "in_orm")

    def __init__(self) -> None:
        # None until the request's first statement: most requests of most apps run none.
        self.stats: dict[str, list[Any]] | None = None
        self.in_orm = 0  # > 0 while an ORM (SQLAlchemy, Django) executes: drivers stand back

    def entries(self) -> tuple[QueryEntry, ...]:
        stats = self.stats
        if not stats:
            return ()
        # A list made in a loop, not tuple() of a generator: a generator costs more to make
        # and resume than the one or two statements most requests run.
        out = []
        for stmt, s in stats.items():
            out.append((stmt, s[0], s[1] * 1000.0, s[2], s[3]))
        return tuple(out)


class QueryHooks:
    """The installed hooks and what they share; one per process (see `install_query_hooks`)."""

    def __init__(self, app_files: AppFiles, clock: Callable[[], float] = time.perf_counter,
                 ) -> None:
        self.app_files = app_files
        self.clock = clock
        self.normalizer = StatementNormalizer()
        self._normalized = self.normalizer.cache
        self._undo: list[Callable[[], None]] = []
        self._installed: set[str] = set()
        # A database library is hooked: only then (or once work handed to a pool is seen, see
        # `offload`) does the middleware put each request in CURRENT (a set and a reset of a
        # context variable in a task: about 120 ns a request).
        self.hooking = False
        self.errors = 0  # the hooks' own failures, swallowed so the app's query goes on

    def add(self, queries: RequestQueries, statement: str, seconds: float) -> None:
        """Count one statement; never raises (it runs inside the app's database calls).

        One Python call on the common path (a statement seen before, once in this request):
        the normalizer's cache is read inline, the call site is looked for only when the
        statement repeats."""
        try:
            key = self._normalized.get(statement)
            if key is None:
                key = self.normalizer(statement)
            stats = queries.stats
            if stats is None:
                queries.stats = {key: [1, seconds, None, None]}
                return
            stat = stats.get(key)
            if stat is None:
                stats[key] = [1, seconds, None, None]
                return
            stat[0] += 1
            stat[1] += seconds
            if stat[0] == 2:  # only a repeated statement needs its call site
                site = self.call_site()
                if site is not None:
                    stat[2], stat[3] = site
        except Exception:
            self.errors += 1

    def call_site(self) -> tuple[str, int] | None:
        """File and line of the innermost app frame of the code issuing the query."""
        found = self._first_app_frame(sys._getframe(1))
        # SQLAlchemy's async engine runs the sync engine in a child greenlet whose stack ends
        # at greenlet_spawn: the app's frames are in the parent greenlets' stacks.
        greenlet = sys.modules.get("greenlet")
        current = greenlet.getcurrent().parent if greenlet is not None else None
        while found is None and current is not None:
            found = self._first_app_frame(current.gr_frame)
            current = current.parent
        return found

    def _first_app_frame(self, frame: FrameType | None) -> tuple[str, int] | None:
        """The innermost app frame from `frame` out, up to the event loop's own frames: what
        calls the loop (a launcher's `run()` around `asyncio.run`, the console command of an
        application installed with its routes) issues no request's queries."""
        while frame is not None:
            filename = frame.f_code.co_filename
            if self.app_files.is_app(filename, frame.f_code.co_name):
                return filename, frame.f_lineno
            if filename in _LOOP_FILES:
                return None
            frame = frame.f_back
        return None

    def install(self) -> None:
        """Hook the database libraries the process has imported so far (call again later:
        libraries already hooked are skipped). Importing one ourselves would load it into
        targets that never use it."""
        installers = {"sqlalchemy": self._install_sqlalchemy,
                      "aiosqlite": self._install_aiosqlite, "asyncpg": self._install_asyncpg,
                      "psycopg": self._install_psycopg, "psycopg2": self._install_psycopg2,
                      "django.db.backends.base.base": self._install_django}
        for module, installer in installers.items():
            if module in sys.modules and module not in self._installed:
                self._installed.add(module)
                installer()
                self.hooking = True

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._installed.clear()
        self.hooking = False

    def _install_sqlalchemy(self) -> None:
        """Wrap the dialects' `do_execute`, `do_execute_no_params` and `do_executemany`, where
        every engine hands each statement to its driver (the async engines too, inside a
        greenlet). Not the engine's events: one listener on `Engine` turns on event dispatch
        for every connection of every engine, about 120 more calls a checkout (each event's
        listener collection is built afresh per connection), which cost a saturated
        SQLAlchemy service 4-5% of its CPU per request, where these wrappers cost one call a
        statement. The dialects overriding a method (psycopg2's `do_executemany`) are wrapped
        on their own; one imported after this is not."""
        try:
            from sqlalchemy.engine.default import DefaultDialect
        except ImportError:
            return
        dialects: list[type] = [DefaultDialect]
        for owner in dialects:  # grows as it goes: every subclass, at any depth
            dialects.extend(owner.__subclasses__())
            for name in ("do_execute", "do_execute_no_params", "do_executemany"):
                self._wrap_dialect(owner, name)

    def _wrap_dialect(self, owner: type, name: str) -> None:
        """`owner.name(cursor, statement, ...)` timed and counted while a request is current;
        drivers' own wrappers stand back meanwhile (`in_orm`). An override that calls its
        base's (`super()`, as pyodbc's does) is left alone: the base's wrapper counts it, once.
        A method that is not a plain function is left alone too. A statement that fails is
        not counted."""
        method = vars(owner).get(name)
        if not inspect.isfunction(method) or "__class__" in method.__code__.co_freevars:
            return
        current, clock, add = CURRENT.get, self.clock, self.add

        def make(original: Any) -> Any:
            @functools.wraps(original)
            def timed(self: Any, cursor: Any, statement: Any, *args: Any, **kwargs: Any
                      ) -> Any:
                queries = current()
                if queries is None:
                    return original(self, cursor, statement, *args, **kwargs)
                queries.in_orm += 1
                started = clock()
                try:
                    result = original(self, cursor, statement, *args, **kwargs)
                finally:
                    queries.in_orm -= 1
                if statement.__class__ is str:
                    add(queries, statement, clock() - started)
                return result
            return timed

        replace(owner, name, make, self._undo)

    def _install_aiosqlite(self) -> None:
        try:
            import aiosqlite
        except ImportError:
            return
        self._wrap(aiosqlite.Connection, "execute")
        self._wrap(aiosqlite.Connection, "execute_fetchall")
        self._wrap(aiosqlite.Cursor, "execute")

    def _install_asyncpg(self) -> None:
        try:
            # Through importlib: asyncpg is optional and typed nowhere in this project.
            connection: Any = importlib.import_module("asyncpg.connection")
        except ImportError:
            return
        Connection = connection.Connection
        # fetch/fetchrow/fetchval and execute-with-arguments all go through _execute;
        # execute without arguments takes the simple-query path instead.
        self._wrap(Connection, "_execute")
        self._wrap(Connection, "_executemany")
        self._wrap(Connection, "execute", only_without_args=True)
        # `asyncpg.connect` and the pool's default (read when a pool is made).
        self._wrap_connect(sys.modules.get("asyncpg"), "asyncpg")
        self._wrap_connect(connection, "asyncpg")
        # The pool resets each connection it takes back (`SELECT pg_advisory_unlock_all();
        # CLOSE ALL; UNLISTEN *; RESET ALL;`): the driver's housekeeping, not the app's
        # statement (counted, a login's six releases read as an N+1 on a Piccolo admin).
        self._quiet(Connection, "reset")

    def _install_django(self) -> None:
        from .django_queries import install_django

        undo = install_django(self)
        if undo is not None:
            self._undo.append(undo)

    def _install_psycopg(self) -> None:
        try:
            psycopg: Any = importlib.import_module("psycopg")
        except ImportError:
            return
        for name in ("execute", "executemany"):
            self._wrap_sync(psycopg.Cursor, name)
            self._wrap(psycopg.AsyncCursor, name)
        self._wrap_connect(psycopg, "psycopg")

    def _install_psycopg2(self) -> None:
        # Its statements are counted by the ORMs' hooks only (its cursor is a C type).
        self._wrap_connect(sys.modules.get("psycopg2"), "psycopg2")

    def _quiet(self, owner: type, name: str) -> None:
        """`owner.name`, a coroutine function, run with the drivers' hooks standing back
        (`in_orm`): what it executes is not counted."""
        if not inspect.iscoroutinefunction(vars(owner).get(name)):
            return
        current = CURRENT.get

        def make(original: Any) -> Any:
            @functools.wraps(original)
            def quiet(self: Any, *args: Any, **kwargs: Any) -> Any:
                queries = current()
                if queries is None:
                    return original(self, *args, **kwargs)
                return _standing_back(original(self, *args, **kwargs), queries)
            return quiet

        replace(owner, name, make, self._undo)

    def _wrap_connect(self, module: Any, driver: str) -> None:
        """`module.connect(...)` counted and timed in the request it runs in, as the statement
        `connection_label(driver)`, whether it succeeds or not. A coroutine function's
        wrapper returns a coroutine (asyncpg's); outside a request the original's own result
        is returned, nothing of ours around it."""
        if module is None or not callable(vars(module).get("connect")):
            return
        current, clock, add = CURRENT.get, self.clock, self.add
        label = connection_label(driver)

        def make(original: Any) -> Any:
            if inspect.iscoroutinefunction(original):
                @functools.wraps(original)
                def opening(*args: Any, **kwargs: Any) -> Any:
                    queries = current()
                    if queries is None:
                        return original(*args, **kwargs)
                    return _awaited(original(*args, **kwargs), queries, label, add, clock)
                return opening

            @functools.wraps(original)
            def opened(*args: Any, **kwargs: Any) -> Any:
                queries = current()
                if queries is None:
                    return original(*args, **kwargs)
                started = clock()
                try:
                    return original(*args, **kwargs)
                finally:
                    add(queries, label, clock() - started)
            return opened

        replace(module, "connect", make, self._undo)

    def _wrap_sync(self, owner: type, name: str) -> None:
        """`_wrap` for a blocking method (psycopg's Cursor)."""
        # What the wrappers use, bound once: each lookup saved is paid by every statement.
        current, clock, add = CURRENT.get, self.clock, self.add

        def make(original: Any) -> Any:
            @functools.wraps(original)
            def timed(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
                queries = current()
                if queries is not None and not queries.in_orm:
                    statement = query if query.__class__ is str else _statement_text(query)
                    if statement is not None:
                        started = clock()
                        try:
                            return original(self, query, *args, **kwargs)
                        finally:
                            add(queries, statement, clock() - started)
                return original(self, query, *args, **kwargs)
            return timed

        replace(owner, name, make, self._undo)

    def _wrap(self, owner: type, name: str, *, only_without_args: bool = False) -> None:
        current, clock, add = CURRENT.get, self.clock, self.add

        def make(original: Any) -> Any:
            if not inspect.iscoroutinefunction(original):
                # aiosqlite's `execute` is a plain function returning an object that is both
                # awaitable and an async context manager (`async with conn.execute(...)`): the
                # wrapper must return the same kind of object, never a coroutine.
                return self._awaitable_wrapper(original)

            @functools.wraps(original)
            def timed(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
                # A plain function: outside a request (and for what is not counted) the
                # driver's own coroutine is returned, with no coroutine of ours around it.
                queries = current()
                if queries is not None and not queries.in_orm and not (only_without_args
                                                                       and args):
                    statement = query if query.__class__ is str else _statement_text(query)
                    if statement is not None:
                        return _awaited(original(self, query, *args, **kwargs), queries,
                                        statement, add, clock)
                return original(self, query, *args, **kwargs)
            return timed

        replace(owner, name, make, self._undo)

    def _awaitable_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        @functools.wraps(original)
        def timed(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, query, *args, **kwargs)
            queries = CURRENT.get()
            statement = _statement_text(query) if queries is not None else None
            if queries is None or queries.in_orm or statement is None:
                return result
            started = hooks.clock()

            def done() -> None:
                hooks.add(queries, statement, hooks.clock() - started)

            return TimedAwaitable(result, done)

        return timed


async def _awaited(call: Any, queries: RequestQueries, statement: str,
                   add: Callable[[RequestQueries, str, float], None],
                   clock: Callable[[], float]) -> Any:
    """Await a driver's coroutine, then count `statement` in `queries` with the time it took
    (whether it succeeded or not)."""
    started = clock()
    try:
        return await call
    finally:
        add(queries, statement, clock() - started)


async def _standing_back(call: Any, queries: RequestQueries) -> Any:
    queries.in_orm += 1
    try:
        return await call
    finally:
        queries.in_orm -= 1


class TimedAwaitable:
    """Stands for a driver's awaitable result (awaited, or entered with `async with`) and calls
    `done` once it has completed; every other attribute is the result's own."""

    __slots__ = ("_result", "_done", "_called")

    def __init__(self, result: Any, done: Callable[[], None]) -> None:
        self._result = result
        self._done = done
        self._called = False

    def _finish(self) -> None:
        if not self._called:
            self._called = True
            self._done()

    def __await__(self) -> Any:
        try:
            return (yield from self._result.__await__())
        finally:
            self._finish()

    async def __aenter__(self) -> Any:
        try:
            return await self._result.__aenter__()
        finally:
            self._finish()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._result.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)


def _statement_text(query: Any) -> str | None:
    """The SQL of a driver call: text as is, bytes decoded; None for anything else (psycopg's
    composed `sql.SQL` objects would need a connection to render)."""
    if isinstance(query, str):
        return query
    if isinstance(query, bytes):
        return query.decode(errors="replace")
    return None


_HOOKS: list[QueryHooks] = []  # the process-wide installation, at most one


def install_query_hooks(app_files: AppFiles | None = None) -> QueryHooks:
    """Install the query hooks once per process; later calls hook libraries imported since
    and return the same hooks."""
    if not _HOOKS:
        _HOOKS.append(QueryHooks(app_files or AppFiles()))
    _HOOKS[0].install()
    return _HOOKS[0]


def uninstall_query_hooks() -> None:
    """Remove every hook `install_query_hooks` added."""
    while _HOOKS:
        _HOOKS.pop().uninstall()
