"""Metrics push and textfile, failure webhook, run_id, and `verify` drift reports."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.output import log
from tests.conftest import ROOT, Db, run

Files = Callable[[dict[str, str | bytes]], Path]
SNAPSHOT = ROOT / "migrations" / "schema.json"


@dataclass
class Received:
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)  # method, path, body


@pytest.fixture
def http_server() -> Iterator[tuple[str, Received]]:
    """A local HTTP server that records every request and answers 200."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.requests.append((self.command, self.path, self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        do_PUT = do_POST = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """Accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_metrics_pushed_to_pushgateway(db: Db, migrations: Files,
                                       http_server: tuple[str, Received]) -> None:
    url, received = http_server
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);",
                         "2_b.sql": "CREATE TABLE b (id int);"})
    result = run(db.url, folder, MIGRATE_PUSHGATEWAY_URL=url, MIGRATE_PUSHGATEWAY_JOB="pacs")
    assert result.code == 0, result.stderr
    ((method, path, body),) = received.requests
    assert method == "PUT"
    assert path.startswith(f"/metrics/job/pacs/database/{db.name}/instance/")
    values = samples(body)
    ok = (("database", db.name), ("outcome", "success"))
    assert values[("database_migrations_total", ok)] == 2
    assert values[("database_migrations_failed_total", (("database", db.name),))] == 0
    assert values[("database_migrations_duration_seconds_count", ok)] == 2
    assert values[("database_migrations_pending", (("database", db.name),))] == 0
    assert "password" not in body.decode() and "postgresql://" not in body.decode()
    assert result.event("metrics_pushed")["job"] == "pacs"


def test_metrics_textfile_on_failure_and_push_failure_keeps_exit_code(
        db: Db, migrations: Files, tmp_path: Path) -> None:
    textfile = tmp_path / "migrations.prom"
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);", "2_bad.sql": "SELECT 1/0;",
                         "3_c.sql": "CREATE TABLE c (id int);"})
    result = run(db.url, folder, MIGRATE_METRICS_FILE=str(textfile),
                 MIGRATE_PUSHGATEWAY_URL="http://127.0.0.1:1")
    assert result.code == 1
    assert "metrics_push_failed" in result.names()
    values = samples(textfile.read_bytes())
    label = (("database", db.name),)
    assert values[("database_migrations_total", (*label, ("outcome", "failure")))] == 1
    assert values[("database_migrations_total", (*label, ("outcome", "success")))] == 1
    assert values[("database_migrations_failed_total", label)] == 1
    assert values[("database_migrations_pending", label)] == 2
    assert values[("database_migrations_last_exit_code", label)] == 1
    assert not list(tmp_path.glob("*.tmp*"))  # written by rename


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers, root.level = handlers, level


def test_library_log_records_become_json_events(
        root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("json", "info")
    logging.getLogger("psycopg").warning("connection %s lost", "x")
    # What psycopg logs when it leaves a pipeline after raising the error the runner reports.
    logging.getLogger("psycopg").warning("error ignored terminating %r: %s", "<Pipeline>",
                                         "pipeline aborted")
    logging.getLogger("psycopg").info("below the threshold")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["event"], e["level"], e["logger"], e["message"]) for e in events] == [
        ("library_log", "warning", "psycopg", "connection x lost")]


def test_webhook_posts_failure(db: Db, migrations: Files,
                               http_server: tuple[str, Received]) -> None:
    url, received = http_server
    folder = migrations({"1_bad.sql": "CREATE TABLE a (id int);\nSELECT 1/0;\n"})
    result = run(db.url, folder, MIGRATE_WEBHOOK_URL=f"{url}/hook/SECRET-TOKEN")
    assert result.code == 1
    ((method, path, body),) = received.requests
    assert (method, path) == ("POST", "/hook/SECRET-TOKEN")
    message = json.loads(body)
    assert (message["exit_code"], message["version"], message["name"], message["sqlstate"]) == (
        1, 1, "1_bad", "22012")
    assert message["database"] == db.name and message["host"]
    assert "1_bad.sql" in message["text"] and "division by zero" in message["text"]
    assert "SECRET-TOKEN" not in result.stderr
    assert result.names()[-2:] == ["webhook_sent", "run_failed"]  # the reason stays last


def test_webhook_not_sent_on_success(db: Db, migrations: Files,
                                     http_server: tuple[str, Received]) -> None:
    url, received = http_server
    result = run(db.url, migrations({"1_a.sql": "SELECT 1;"}), MIGRATE_WEBHOOK_URL=url)
    assert result.code == 0
    assert received.requests == []


def test_hanging_webhook_is_bounded_and_keeps_exit_code(
        migrations: Files, hanging_server: str) -> None:
    started = time.monotonic()
    result = run(None, migrations({"bad name.sql": "SELECT 1;"}),
                 MIGRATE_WEBHOOK_URL=hanging_server, MIGRATE_WEBHOOK_TIMEOUT="1s")
    assert result.code == 5
    assert time.monotonic() - started < 10
    assert "timed out" in result.event("webhook_failed")["error"]


def test_every_event_carries_one_run_id(db: Db, migrations: Files) -> None:
    result = run(db.url, migrations({"1_a.sql": "SELECT 1;"}))
    ids = {e.get("run_id") for e in result.events}
    assert len(ids) == 1 and None not in ids
    other = run(db.url, migrations({"1_a.sql": "SELECT 1;"}))
    assert {e["run_id"] for e in other.events} != ids


def test_verify_matches_committed_pacs_snapshot_and_reports_drift(db: Db) -> None:
    assert run(db.url, ROOT / "migrations").code == 0
    same = run(db.url, None, "verify", "--expect", str(SNAPSHOT))
    assert same.code == 0, same.stdout + same.stderr
    db.execute("ALTER TABLE security.users ADD COLUMN nickname text;"
               "ALTER TABLE security.users ALTER COLUMN email DROP NOT NULL;"
               "ALTER TABLE annotation.masks DROP CONSTRAINT fk_masks_mask_group")
    drifted = run(db.url, None, "verify", "--expect", str(SNAPSHOT))
    assert drifted.code == 5
    out = drifted.stdout
    assert "+ column security.users.nickname not in the snapshot (text)" in out
    assert "~ column security.users.email: text NOT NULL -> text" in out
    assert "- constraint annotation.masks.fk_masks_mask_group missing" in out
    assert drifted.events[-1]["drift"]


def test_verify_report_is_json_with_row_estimates(db: Db) -> None:
    assert run(db.url, ROOT / "migrations").code == 0
    db.execute("ANALYZE security.roles")
    result = run(db.url, None, "verify", "--report-schema", "security")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    roles = report["schemas"]["security"]["tables"]["roles"]
    assert roles["estimated_rows"] == 5
    assert roles["columns"]["name"]["nullable"] is False
    assert any(c["type"] == "PRIMARY KEY" for c in roles["constraints"].values())
    assert list(report["schemas"]) == ["security"]
