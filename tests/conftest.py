from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pg import Cluster
from tests.proxy import Proxy

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Large-fleet tests (minutes, hundreds of databases) run only when `-m` names them:
    `pytest -m fleet_large`."""
    if "fleet_large" in str(config.getoption("markexpr") or ""):
        return
    large = [item for item in items if "fleet_large" in item.keywords]
    if large:
        config.hook.pytest_deselected(items=large)
        items[:] = [item for item in items if "fleet_large" not in item.keywords]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    yield c
    c.destroy()


@dataclass
class Db:
    cluster: Cluster
    name: str

    @property
    def url(self) -> str:
        return self.cluster.url(self.name)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True)

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str) -> None:
        with self.connect() as conn:
            conn.execute(sql)

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def table_exists(self, qualified: str) -> bool:
        return bool(self.scalar("SELECT to_regclass(%s) IS NOT NULL", (qualified,)))


@pytest.fixture
def db(cluster: Cluster) -> Db:
    name = f"t{os.getpid()}_{next(_counter)}"
    with cluster.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return Db(cluster, name)


@pytest.fixture
def proxy(db: Db) -> Iterator[Proxy]:
    """A TCP forwarder to `db`'s server that the test can stall (tests.proxy)."""
    p = Proxy(db.cluster.port)
    yield p
    p.close()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == name]
        assert found, f"no {name!r} event in:\n{self.stderr}"
        return found[-1]

    def names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events]


def parse_events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line is one JSON event (SPEC §6): a stray warning or traceback fails
    the test that produced it."""
    return [json.loads(line) for line in stderr.splitlines() if line]


def runner_env(url: str | None, migrations: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "MIGRATE_", "DATABASE_URL", "RUN_MIGRATIONS"))}
    env.update(MIGRATE_LOG_FORMAT="json", MIGRATE_TERMINATION_LOG="", PYTHONUNBUFFERED="1")
    if url is not None:
        env["DATABASE_URL"] = url
    if migrations is not None:
        env["MIGRATIONS_DIR"] = str(migrations)
    env.update(extra)
    return env


def runner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner", *args]


def run(url: str | None, migrations: Path | None, *args: str, timeout: float = 120,
        **env: str) -> Result:
    proc = subprocess.run(runner_cmd(*args), env=runner_env(url, migrations, **env),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return Result(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stderr))


class Runner:
    """A runner process in the background whose log is read line by line as it comes.

    Threads drain both pipes: select() on a buffered pipe misses lines already read into
    the buffer, and an undrained pipe could block the process.
    """

    def __init__(self, url: str | None, migrations: Path | None, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(runner_cmd(*args), env=runner_env(url, migrations, **env),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        self.start_readers()

    def start_readers(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stdout: list[str] = []
        stderr, stdout = self.proc.stderr, self.proc.stdout
        assert stderr is not None and stdout is not None

        def pump_stderr() -> None:
            for line in stderr:
                self._queue.put(line)
            self._queue.put(None)

        self._threads = [threading.Thread(target=pump_stderr, daemon=True),
                         threading.Thread(target=lambda: self._stdout.append(stdout.read()),
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def _record(self, line: str) -> dict[str, Any] | None:
        self.lines.append(line)
        if not line.startswith("{"):
            return None
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def wait_for_event(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Read stderr until `name` is logged; the deadline guards a runner that never logs it."""
        for e in self.events:
            if e.get("event") == name:
                return e
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # keep the end visible to finish()
                break
            event = self._record(line)
            if event is not None and event.get("event") == name:
                return event
        raise AssertionError(f"no {name!r} event within {timeout}s:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 60) -> Result:
        self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self._record(line)
        stderr = "".join(self.lines)
        return Result(self.proc.returncode, "".join(self._stdout), stderr, parse_events(stderr))


@pytest.fixture
def migrations(tmp_path: Path) -> Callable[..., Path]:
    """Write migration files: migrations({"001_a.sql": "..."}) -> folder."""
    folder = tmp_path / "migrations"
    folder.mkdir()

    def write(files: dict[str, str | bytes]) -> Path:
        for name, content in files.items():
            path = folder / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        return folder

    return write


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


PASSWORD = "s3cret-Pa55word"


@pytest.fixture(scope="session")
def password_cluster() -> Iterator[Cluster]:
    c = Cluster(password=PASSWORD)
    c.start()
    with c.connect() as conn:
        conn.execute(f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'")
        conn.execute("CREATE DATABASE app OWNER app")
    yield c
    c.destroy()


@pytest.fixture
def cluster_with_password(password_cluster: Cluster) -> tuple[str, str]:
    """(URL of role `app` with its password, the password)."""
    with password_cluster.connect("app") as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public AUTHORIZATION app")
    return password_cluster.url("app", user="app"), PASSWORD


_roles = itertools.count()


def login_role(db: Db, connection_limit: int | None = None, **settings: str) -> str:
    """A login role (not a superuser) owning `db` and its public schema, with `ALTER ROLE
    ... SET` settings and a CONNECTION LIMIT when given; its URL."""
    role = f"role{os.getpid()}_{next(_roles)}"
    db.execute(f'CREATE ROLE "{role}" LOGIN; ALTER DATABASE "{db.name}" OWNER TO "{role}"; '
               f'ALTER SCHEMA public OWNER TO "{role}"')
    if connection_limit is not None:
        db.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT {connection_limit}')
    for name, value in settings.items():
        db.execute(f"ALTER ROLE \"{role}\" SET {name} = '{value}'")
    return db.cluster.url(db.name, user=role)
