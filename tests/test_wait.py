"""Waiting for the database: decided by the SQLSTATE the server sent, never by its words,
and up to the deadline itself (issue 10 E; SPEC §3)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Db, Runner, run, wait_until
from tests.pg import Cluster, free_port

Files = Callable[[dict[str, str | bytes]], Path]
KOREAN = "ko_KR.UTF-8"


def _rejecting(cluster: Cluster) -> bool:
    """pg_isready's exit 1: the server answers, and refuses connections (starting up)."""
    return subprocess.run([str(cluster.bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                           str(cluster.port)], capture_output=True).returncode == 1


@pytest.fixture(scope="module")
def korean() -> Iterator[Cluster]:
    """A server speaking Korean (lc_messages=ko_KR.UTF-8); CI installs the locale in
    .ci/ensure-postgres."""
    if "ko_KR.utf8" not in subprocess.run(["locale", "-a"], capture_output=True,
                                          text=True).stdout.split():
        pytest.fail("the ko_KR.UTF-8 locale is missing: run `bash .ci/ensure-postgres`")
    c = Cluster(password="korean-pw", settings={"lc_messages": KOREAN})
    yield c
    c.destroy()


def test_korean_server_translates_its_refusals(korean: Cluster) -> None:
    """The premise of the other Korean tests: the server's words are not English."""
    if not korean.running():
        korean.start()
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(korean.url(password="wrong"), connect_timeout=5).close()
    assert "password authentication failed" not in str(caught.value)
    assert "인증" in str(caught.value)  # "authentication"


def test_korean_server_starting_up_is_waited_for(korean: Cluster, migrations: Files) -> None:
    """The reported instance: a translated "starting up" made the runner give up at once."""
    korean.stop()
    korean.hold_in_recovery()
    korean.start(wait=False)
    wait_until(lambda: _rejecting(korean), timeout=30, what="server refusing as it starts")
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    runner = Runner(korean.url(), folder, MIGRATE_WAIT_TIMEOUT="60s")
    retry = runner.wait_for_event("db_wait_retry")
    assert retry["reason"] == "starting_up"
    korean.promote()
    result = runner.finish(timeout=60)
    assert result.code == 0, result.stderr
    with korean.connect() as conn:
        assert conn.execute("SELECT count(*) FROM migration_history").fetchone() == (1,)


@pytest.mark.parametrize(("password", "dbname", "sqlstate"), [
    ("wrong", "postgres", "28P01"), (None, "no_such_db", "3D000")])
def test_korean_server_bad_credentials_or_database_fail_at_once(
        korean: Cluster, migrations: Files, password: str | None, dbname: str,
        sqlstate: str) -> None:
    if not korean.running():
        korean.start()
    started = time.monotonic()
    result = run(korean.url(dbname, password=password), migrations({"1_a.sql": "SELECT 1;"}),
                 MIGRATE_WAIT_TIMEOUT="60s")
    assert result.code == 3, result.stderr
    assert time.monotonic() - started < 10
    assert "db_wait_retry" not in result.names()
    assert result.events[-1]["sqlstate"] == sqlstate
    assert "LOCATION" not in result.events[-1]["error"]  # VERBOSE's source line is noise


@pytest.fixture
def limited(db: Db) -> Iterator[tuple[str, list[psycopg.Connection[tuple[object, ...]]]]]:
    """(URL of a role whose CONNECTION LIMIT 2 is used up, the two connections using it)."""
    role = f"{db.name}_lim"
    db.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 2')
    db.execute(f'ALTER DATABASE "{db.name}" OWNER TO "{role}"')
    db.execute(f'ALTER SCHEMA public OWNER TO "{role}"')
    url = db.cluster.url(db.name, user=role)
    holders = [psycopg.connect(url, autocommit=True) for _ in range(2)]
    yield url, holders
    for conn in holders:
        conn.close()


def test_role_at_connection_limit_is_waited_for_then_succeeds(
        limited: tuple[str, list[psycopg.Connection[tuple[object, ...]]]], db: Db,
        migrations: Files) -> None:
    """The reported instance: 53300 "too many connections for role" exited 3 at once."""
    url, holders = limited
    runner = Runner(url, migrations({"1_a.sql": "CREATE TABLE a (id int);"}),
                    MIGRATE_WAIT_TIMEOUT="60s")
    retry = runner.wait_for_event("db_wait_retry")
    assert retry["reason"] == "too_many_connections"
    for conn in holders:
        conn.close()
    result = runner.finish(timeout=60)
    assert result.code == 0, result.stderr
    assert db.table_exists("public.a")


def test_role_at_connection_limit_exit_3_at_the_deadline(
        limited: tuple[str, list[psycopg.Connection[tuple[object, ...]]]],
        migrations: Files) -> None:
    url, _holders = limited
    started = time.monotonic()
    result = run(url, migrations({"1_a.sql": "SELECT 1;"}), MIGRATE_WAIT_TIMEOUT="2s")
    elapsed = time.monotonic() - started
    assert result.code == 3, result.stderr
    assert result.events[-1]["sqlstate"] == "53300"
    assert {e["reason"] for e in result.events if e["event"] == "db_wait_retry"} == {
        "too_many_connections"}
    assert 2 <= elapsed < 5


def test_nothing_listening_waits_up_to_the_deadline_and_tries_at_it(migrations: Files) -> None:
    """The reported instance: with 3 s it gave up after 2.3 s, when the next sleep would
    have crossed the deadline. Now the last sleep is cut to the time left."""
    folder = migrations({"1_a.sql": "SELECT 1;"})
    started = time.monotonic()
    result = run(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", folder,
                 MIGRATE_WAIT_TIMEOUT="3s")
    elapsed = time.monotonic() - started
    assert result.code == 3
    assert 3.0 <= elapsed < 4.5, f"gave up after {elapsed:.2f} s"
    retries = [e for e in result.events if e["event"] == "db_wait_retry"]
    waited = sum(e["delay_s"] for e in retries)
    assert 2.5 <= waited <= 3.0, f"slept {waited:.3f} s in all"
    # The first attempt is made outside the retry loop, and still counted as its first.
    assert [e["attempt"] for e in retries] == list(range(1, len(retries) + 1))


@pytest.mark.parametrize("command", ["migrate", "status"])
def test_nothing_configured_exit_2_at_once_naming_database_url(
        command: str, migrations: Files) -> None:
    """Issue 13 item 10: with no DATABASE_URL and no PG* variable every command retried
    `postgresql:///` for the whole wait. Nothing configured cannot become configured by
    waiting: libpq's defaults get one try (as psql gives them), then exit 2."""
    started = time.monotonic()
    result = run(None, migrations({"1_a.sql": "SELECT 1;"}), command,
                 MIGRATE_WAIT_TIMEOUT="10s")
    assert result.code == 2, result.stderr
    assert time.monotonic() - started < 5
    assert "db_wait_retry" not in result.names()
    last = result.events[-1]
    assert last["variable"] == "DATABASE_URL"
    assert last["error"].startswith("no database configured: set DATABASE_URL")


def test_refused_tcp_connection_keeps_libpq_main_line(migrations: Files) -> None:
    """Issue 13 item 17: only the trailing hint, with its tab, was kept."""
    result = run(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
                 migrations({"1_a.sql": "SELECT 1;"}), MIGRATE_WAIT_TIMEOUT="0")
    assert result.code == 3
    error = result.events[-1]["error"]
    assert "Connection refused" in error and "Is the server running" in error
    assert "\t" not in error


def test_server_that_never_answers_is_a_timeout_retried(migrations: Files) -> None:
    """No SQLSTATE and no refusal: the TCP connection is accepted and nothing answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        started = time.monotonic()
        result = run(f"postgresql://postgres@127.0.0.1:{port}/postgres",
                     migrations({"1_a.sql": "SELECT 1;"}), MIGRATE_WAIT_TIMEOUT="3s",
                     MIGRATE_CONNECT_TIMEOUT="2s")
        elapsed = time.monotonic() - started
    assert result.code == 3, result.stderr
    assert {e["reason"] for e in result.events if e["event"] == "db_wait_retry"} == {"timeout"}
    assert 3 <= elapsed < 3 + 2 + 1.5  # the last attempt may start at the deadline
