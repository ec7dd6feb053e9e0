"""No text of the connection string reaches any output, whatever libpq says (issue 10 D).

Every case runs `migrate` with every output channel switched on: stdout, stderr (every
event), the termination message, the failure webhook, the metrics file and the
Pushgateway. The password holds a marker; neither it nor a piece of it may appear.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result, run
from tests.pg import Cluster, free_port

Files = Callable[[dict[str, str | bytes]], Path]
HEAD, TAIL = "HUSHhead", "TAILhush"  # the two halves of every marker password


@dataclass
class Outputs:
    result: Result
    termination: str
    metrics: str
    http: list[bytes]  # every request line and body the webhook and Pushgateway sent

    def everything(self) -> str:
        return "\n".join([self.result.stdout, self.result.stderr, self.termination,
                          self.metrics, *(b.decode() for b in self.http)])

    def assert_clean(self, *pieces: str) -> None:
        text = self.everything()
        for piece in pieces:
            assert piece not in text, f"{piece!r} leaked:\n{text}"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(self.requestline.encode() + b"\n" + self.rfile.read(length))
            self.send_response(200)
            self.end_headers()

        do_PUT = do_POST = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def run_all(tmp_path: Path, migrations: Files,
            receiver: tuple[str, list[bytes]]) -> Callable[..., Outputs]:
    base, received = receiver
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})

    def go(url: str | None, *args: str, **env: str) -> Outputs:
        received.clear()
        term, metrics = tmp_path / "term", tmp_path / "metrics.prom"
        for f in (term, metrics):
            f.unlink(missing_ok=True)
        settings = {"MIGRATE_WAIT_TIMEOUT": "1s", "MIGRATE_TERMINATION_LOG": str(term),
                    "MIGRATE_METRICS_FILE": str(metrics), "MIGRATE_WEBHOOK_URL": f"{base}/hook",
                    "MIGRATE_PUSHGATEWAY_URL": base, **env}
        result = run(url, folder, *(args or ("migrate",)), **settings)
        out = Outputs(result, term.read_text() if term.exists() else "",
                      metrics.read_text() if metrics.exists() else "", list(received))
        if not args or args[0] == "migrate":  # metrics are a migrate run's
            assert out.metrics and any(b.startswith(b"PUT") for b in out.http), out.everything()
        if result.code != 0:  # the failure channels were all used, so they were all checked
            assert out.termination and any(b.startswith(b"POST") for b in out.http)
        return out

    return go


def test_unencoded_percent_in_password_exit_2_without_the_password(
        run_all: Callable[..., Outputs]) -> None:
    """The reported instance: libpq quoted the bad token, the whole password."""
    out = run_all("postgresql://app:Zq%7x!@127.0.0.1:5432/db")
    assert out.result.code == 2
    assert "db_wait_retry" not in out.result.names()
    assert "percent-encode" in out.termination
    out.assert_clean("Zq%7x!", "Zq%7", "%7x!")


def test_unencoded_at_in_password_exit_2_at_once_without_its_tail(
        run_all: Callable[..., Outputs]) -> None:
    """The reported instance: `ss@127.0.0.1` was retried as a host name until exit 3."""
    out = run_all("postgresql://app:p@ss@127.0.0.1:5432/db", MIGRATE_WAIT_TIMEOUT="60s")
    assert out.result.code == 2
    assert "db_wait_retry" not in out.result.names()
    assert "%40" in out.termination
    out.assert_clean("p@ss", "ss@127", "app@ss")


MALFORMED = {
    "bad percent-encoding": f"postgresql://app:{HEAD}%zz{TAIL}@127.0.0.1:{{port}}/app",
    "unencoded @": f"postgresql://app:{HEAD}@{TAIL}@127.0.0.1:{{port}}/app",
    "unencoded / (host:port)": f"postgresql://app:{HEAD}/{TAIL}@127.0.0.1:{{port}}/app",
    "unencoded / (database name)": f"postgresql://app:5432/{HEAD}{TAIL}@127.0.0.1:{{port}}/app",
    "@ and ?": f"postgresql://app:{HEAD}?x@{TAIL}@127.0.0.1:{{port}}/app",
    "unknown query parameter": f"postgresql://app:{HEAD}@127.0.0.1:{{port}}/app?{TAIL}=1",
    "key=value unterminated quote": f"host=127.0.0.1 port={{port}} password='{HEAD} {TAIL}",
    "key=value unquoted space": f"host=127.0.0.1 port={{port}} password={HEAD} {TAIL}=1",
    "key=value missing =": f"host=127.0.0.1 port={{port}} password={HEAD} {TAIL}",
    "key=value host with @": f"host={TAIL}@127.0.0.1 port={{port}} password={HEAD}",
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_connection_string_exit_2_and_nothing_of_it_shown(
        case: str, run_all: Callable[..., Outputs]) -> None:
    out = run_all(MALFORMED[case].format(port=free_port()), MIGRATE_WAIT_TIMEOUT="60s")
    assert out.result.code == 2, out.everything()
    assert "db_wait_retry" not in out.result.names()
    out.assert_clean(HEAD, TAIL)


def test_malformed_url_file_names_the_file_and_hides_the_password(
        run_all: Callable[..., Outputs], tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    url_file.write_text(f"postgresql://app:{HEAD}@{TAIL}%zz@127.0.0.1:{free_port()}/app\n")
    out = run_all(None, DATABASE_URL_FILE=str(url_file))
    assert out.result.code == 2
    assert out.result.events[-1]["variable"] == "DATABASE_URL_FILE"
    assert str(url_file) in out.termination
    out.assert_clean(HEAD, TAIL)


WRONG = {  # parse fine, and the server (or the network) refuses them
    ": in the password": f"postgresql://app:{HEAD}:{TAIL}@127.0.0.1:{{port}}/app",
    "? in the password": f"postgresql://app:{HEAD}?{TAIL}@127.0.0.1:{{port}}/app",
    "# in the password": f"postgresql://app:{HEAD}#{TAIL}@127.0.0.1:{{port}}/app",
    "wrong password": f"postgresql://app:{HEAD}{TAIL}@127.0.0.1:{{port}}/app",
    "key=value wrong password": f"host=127.0.0.1 port={{port}} user=app password='{HEAD} {TAIL}'"
                                " dbname=app",
    "bad option value": f"postgresql://app:{HEAD}@127.0.0.1:{{port}}/app?sslmode={TAIL}",
    "bad option value in key=value": f"host=127.0.0.1 port={{port}} password={HEAD}"
                                     f" target_session_attrs={TAIL}",
}


@pytest.mark.parametrize("case", WRONG)
def test_refused_connection_shows_nothing_of_the_string(
        case: str, run_all: Callable[..., Outputs], password_cluster: Cluster) -> None:
    out = run_all(WRONG[case].format(port=password_cluster.port))
    assert out.result.code in (2, 3), out.everything()
    out.assert_clean(HEAD, TAIL)


def test_pgpassword_with_an_unreachable_host_is_not_shown(
        run_all: Callable[..., Outputs]) -> None:
    out = run_all(None, PGHOST="no-such-host.invalid", PGPORT=str(free_port()),
                  PGPASSWORD=f"{HEAD}{TAIL}", PGUSER="app")
    assert out.result.code == 3
    out.assert_clean(HEAD, TAIL)


def test_special_characters_percent_encoded_connect_and_stay_hidden(
        run_all: Callable[..., Outputs], password_cluster: Cluster) -> None:
    password = f"{HEAD}@:/?#% '{TAIL}"
    with password_cluster.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS leak")
        conn.execute("DROP ROLE IF EXISTS leak")
        conn.execute("CREATE ROLE leak LOGIN PASSWORD %s".replace("%s", "'"
                     + password.replace("'", "''") + "'"))
        conn.execute("CREATE DATABASE leak OWNER leak")
    from urllib.parse import quote

    url = f"postgresql://leak:{quote(password, safe='')}@127.0.0.1:{password_cluster.port}/leak"
    out = run_all(url)
    assert out.result.code == 0, out.everything()
    status = run_all(url, "status")
    assert status.result.code == 0 and status.result.stdout
    for each in (out, status):
        each.assert_clean(HEAD, TAIL, quote(password, safe=""))


def test_internal_error_traceback_and_termination_are_scrubbed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    """A bug whose exception quotes the password: the traceback is rendered before the
    scrubber sees the event, and the termination message is scrubbed too."""
    from runner import cli
    from runner.session import conninfo

    monkeypatch.setattr(conninfo, "_secrets", set())

    def bug(settings: Any, as_json: bool, exit_code: bool = False) -> int:
        conninfo.parse(settings.conninfo())
        raise RuntimeError(f"bug near {HEAD}{TAIL}")

    monkeypatch.setattr("runner.commands.status.status", bug)
    term = tmp_path / "term"
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{HEAD}{TAIL}@127.0.0.1:1/app")
    monkeypatch.setenv("MIGRATE_TERMINATION_LOG", str(term))
    monkeypatch.setenv("MIGRATE_LOG_FORMAT", "json")
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError" in err and "Traceback" in err
    assert HEAD not in err and TAIL not in err
    assert term.read_text().startswith("internal error") and HEAD not in term.read_text()


def test_scrub_hides_secrets_bare_and_other_values_only_as_libpq_quotes_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`sslmode=require` (every RDS URL) must not blank "require" in every message."""
    from runner.session import conninfo

    monkeypatch.setattr(conninfo, "_secrets", set())
    url = f"postgresql://app:{HEAD}%40{TAIL}@db:5432/app?sslmode=require&sslcert=/s/{TAIL}.crt"
    conninfo.parse(url, environ={})
    text = (f'SSL was required; password {HEAD}@{TAIL} or {HEAD}%40{TAIL}; could not open '
            f'certificate file "/s/{TAIL}.crt"; user app on db:5432/app')
    assert conninfo.scrub(text) == ("SSL was required; password *** or ***; could not open "
                                    "certificate file ***; user app on db:5432/app")
