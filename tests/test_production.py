"""Production on RDS (issue 22 A): TLS verified against a CA the operator mounts, a
password file re-read at every connection attempt, and the two roles (a migrator that
may run DDL, an app that may not) — each against a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PASSWORD, ROOT, Db, Runner, run, wait_until
from tests.pg import Cluster

# --- TLS: sslmode=verify-full with a mounted CA bundle ----------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path, server_name: str) -> None:
    """ca.crt, and server.crt / server.key signed by it for `server_name` only."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=test RDS root CA", "-keyout", "ca.key", "-out", "ca.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={server_name}",
            "-keyout", "server.key", "-out", "server.csr", cwd=folder)
    (folder / "ext.cnf").write_text(f"subjectAltName=DNS:{server_name}\n"
                                    "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt",
            cwd=folder)


@pytest.fixture(scope="module", name="tls_cluster")
def tls_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """A server with ssl=on and a certificate for `localhost` only; (cluster, CA file)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    certs = tmp_path_factory.mktemp("certs")
    make_certificates(certs, "localhost")
    cluster = Cluster()
    for name in ("server.crt", "server.key"):  # the server's own, as postgres requires
        target = cluster.tmp / name
        shutil.copy(certs / name, target)
        target.chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(target, "postgres")
    cluster.settings.update(ssl="on", ssl_cert_file=str(cluster.tmp / "server.crt"),
                            ssl_key_file=str(cluster.tmp / "server.key"))
    cluster.start()
    ca = tmp_path_factory.mktemp("ca") / "rds-ca.pem"  # a read-only mount, as in the pod
    shutil.copy(certs / "ca.crt", ca)
    ca.chmod(0o444)
    yield cluster, ca
    cluster.destroy()


def tls_url(cluster: Cluster, host: str, **params: str) -> str:
    """The URL docs/deploying.md shows, on 127.0.0.1: `host` is the name verified."""
    query = "&".join(f"{k}={v}" for k, v in {"sslmode": "verify-full", **params}.items())
    return (f"postgresql://postgres@{host}:{cluster.port}/postgres?hostaddr=127.0.0.1"
            f"&{query}")


def test_verify_full_with_the_ca_bundle_from_pgsslrootcert(
        tls_cluster: tuple[Cluster, Path], migrations: Path) -> None:
    cluster, ca = tls_cluster
    folder = migrations({"001_a.up.sql": "CREATE TABLE tls_a (id int);\n",
                         "001_a.down.sql": "DROP TABLE tls_a;\n"})
    # The pod's environment: no home directory, the bundle named by PGSSLROOTCERT.
    result = run(tls_url(cluster, "localhost"), folder, "migrate",
                 PGSSLROOTCERT=str(ca), HOME="/nonexistent")
    assert result.code == 0, result.stderr
    with cluster.connect() as conn:  # verify-full connects over TLS or not at all
        assert conn.execute("SELECT to_regclass('tls_a') IS NOT NULL").fetchone() == (True,)
    # In the URL instead of the environment: the same.
    again = run(tls_url(cluster, "localhost", sslrootcert=str(ca)), folder, "status",
                HOME="/nonexistent")
    assert again.code == 0, again.stderr
    with cluster.connect() as conn:
        conn.execute("DROP TABLE tls_a, _sqlx_migrations, migration_audit")


@pytest.mark.parametrize(("host", "ca", "says"), [
    # The certificate names localhost; the URL another host: a man in the middle, or the
    # wrong endpoint. Refused for good, not retried.
    ("127.0.0.1", True, 'does not match host name "127.0.0.1"'),
    # No CA bundle where libpq looks (the image has no home directory).
    ("localhost", False, "root certificate file"),
])
def test_verify_full_refuses_what_it_cannot_verify_exit_3(
        tls_cluster: tuple[Cluster, Path], migrations: Path, host: str, ca: bool,
        says: str) -> None:
    cluster, bundle = tls_cluster
    folder = migrations({"001_a.up.sql": "SELECT 1;\n", "001_a.down.sql": "SELECT 1;\n"})
    env = {"PGSSLROOTCERT": str(bundle)} if ca else {}
    result = run(tls_url(cluster, host), folder, "migrate", MIGRATE_WAIT_TIMEOUT="60s",
                 HOME="/nonexistent", **env)
    assert result.code == 3, result.stderr
    assert "db_wait_retry" not in result.names(), "retrying cannot fix a certificate"
    error = result.events[-1]["error"]
    assert "failed TLS verification" in error and says in error, error
    assert "refused the connection" not in error


# --- short-lived passwords: the file is read at every connection attempt -----------------


@pytest.fixture
def stopped_password_cluster() -> Iterator[Cluster]:
    """A server with a password for `postgres`, not started yet: the runner waits for it."""
    cluster = Cluster(password=PASSWORD)
    yield cluster
    cluster.destroy()


@pytest.mark.parametrize("how", ["DATABASE_PASSWORD_FILE", "PGPASSFILE"])
def test_a_password_refreshed_while_the_runner_waits_is_used(
        stopped_password_cluster: Cluster, migrations: Path, tmp_path: Path,
        how: str) -> None:
    """The token in the file expired; a sidecar writes a new one while the runner waits
    for the server: the attempt after that uses the new one (read once, the old one
    would have been refused for good: 28P01, exit 3)."""
    cluster = stopped_password_cluster
    folder = migrations({"001_a.up.sql": "CREATE TABLE refreshed (id int);\n",
                         "001_a.down.sql": "DROP TABLE refreshed;\n"})
    secret = tmp_path / "secret"
    secret.mkdir()
    password_file = secret / "password"

    def write(password: str) -> None:
        if how == "PGPASSFILE":  # libpq's format, and the 0600 it insists on
            password = f"127.0.0.1:{cluster.port}:postgres:postgres:{password}"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)

    write("expired-token")
    runner = Runner(cluster.url(password=""), folder, "migrate", MIGRATE_WAIT_TIMEOUT="90s",
                    **{how: str(password_file)})
    runner.wait_for_event("db_wait_retry", timeout=30)
    write(PASSWORD)
    cluster.start()
    result = runner.finish(timeout=120)
    assert result.code == 0, result.stderr
    assert result.event("migration_applied")["version"] == 1
    assert PASSWORD not in result.stderr and "expired-token" not in result.stderr
    with cluster.connect() as conn:
        assert conn.execute("SELECT to_regclass('refreshed') IS NOT NULL").fetchone() == (True,)


def test_an_unreadable_password_file_is_a_configuration_error(
        db: Db, migrations: Path, tmp_path: Path) -> None:
    folder = migrations({"001_a.up.sql": "SELECT 1;\n", "001_a.down.sql": "SELECT 1;\n"})
    result = run(db.url, folder, "status", DATABASE_PASSWORD_FILE=str(tmp_path / "none"))
    assert result.code == 2
    assert result.events[-1]["error"].startswith("DATABASE_PASSWORD_FILE ")


# --- after a deadline kill ---------------------------------------------------------------


def test_a_run_killed_in_a_no_transaction_file_says_what_to_do_next(
        db: Db, migrations: Path) -> None:
    """activeDeadlineSeconds ends in SIGKILL: nothing of the runner's own handling runs,
    and the next run's refusal is all the operator gets."""
    import signal

    folder = migrations({"001_slow.sql": "-- migrate:no-transaction\nSELECT pg_sleep(60);\n",
                         "001_slow_rollback.sql": "SELECT 1;\n"})
    runner = Runner(db.url, folder, "migrate")
    runner.wait_for_event("migration_started")
    wait_until(lambda: bool(db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%' "
        "AND datname = %s", (db.name,))), what="the file's statement running")
    runner.proc.send_signal(signal.SIGKILL)
    assert runner.finish().code == -signal.SIGKILL
    # While the killed run's statement still runs on the server, the next run waits for it
    # (SPEC §10.1, exit 4); once the server noticed the dead client (keepalives,
    # client_connection_check_interval) the row is the operator's.
    wait_until(lambda: not db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%' "
        "AND datname = %s", (db.name,)), timeout=30, what="the killed run's statement ended")
    refused = run(db.url, folder, "migrate", MIGRATE_LOCK_TIMEOUT="60s")
    assert refused.code == 5, refused.stderr
    error = refused.event("run_failed")["error"]
    for needle in ("001_slow.sql: failed part-way", "activeDeadlineSeconds",
                   "INVALID index", "DROP INDEX CONCURRENTLY", "repair --failed",
                   "repair --mark-applied 1"):
        assert needle in error, (needle, error)


# --- two roles: the migrator (DDL) and the app (rows) ------------------------------------


def role_sql() -> list[str]:
    """The two SQL blocks of docs/deploying.md, "Two roles": (as the admin, as the migrator)."""
    text = (ROOT / "docs" / "deploying.md").read_text()
    section = text.split("### Two roles: the migrator and the app", 1)[1].split("\n### ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```sql\n")[1:]]
    assert len(blocks) == 2, blocks
    return blocks


def test_the_documented_roles_migrate_as_migrator_and_the_app_gets_rows_only(db: Db) -> None:
    migrator, app = f"{db.name}_migrator", f"{db.name}_app"

    def named(sql: str) -> str:
        return (sql.replace("pacs_migrator", migrator).replace("pacs_app", app)
                .replace("DATABASE pacs ", f'DATABASE "{db.name}" '))

    as_admin, as_migrator = (named(block) for block in role_sql())
    db.execute(as_admin)
    url = db.cluster.url(db.name, user=migrator)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(as_migrator)
    result = run(url, ROOT / "migrations", "migrate", MIGRATE_HISTORY_FORMAT="sqlx")
    assert result.code == 0, result.stderr
    verified = run(url, ROOT / "migrations", "verify", "--expect", "migrations/schema.json",
                   MIGRATE_HISTORY_FORMAT="sqlx")
    assert verified.code == 0, verified.stdout + verified.stderr
    assert db.scalar("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles "
                     "WHERE rolname = %s", (migrator,)) is False

    with psycopg.connect(db.cluster.url(db.name, user=app), autocommit=True) as conn:
        # The app's reads: the permission catalogue, joined as the app joins it.
        granted = conn.execute(
            "SELECT count(*) FROM security.role_permission rp "
            "JOIN security.roles r ON r.id = rp.role_id "
            "JOIN security.permissions p ON p.id = rp.permission_id").fetchone()
        assert granted == (30,)
        # ... and its writes (an identity column: the sequence's USAGE).
        conn.execute("INSERT INTO security.users (username, email) "
                     "VALUES ('ada', 'ada@example.org')")
        conn.execute("UPDATE security.users SET display_name = 'Ada' WHERE username = 'ada'")
        assert conn.execute("SELECT count(*) FROM annotation.masks").fetchone() == (0,)
        # No DDL, anywhere.
        for ddl in ("CREATE TABLE security.app_made (id int)",
                    "ALTER TABLE security.users ADD COLUMN app_made int",
                    "DROP TABLE annotation.masks",
                    "CREATE INDEX ON security.users (display_name)",
                    "CREATE SCHEMA app_made",
                    "CREATE TABLE public.app_made (id int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(ddl)


def test_the_password_file_wins_over_the_urls_password(
        cluster_with_password: tuple[str, str], migrations: Path, tmp_path: Path) -> None:
    url, password = cluster_with_password
    secret = tmp_path / "password"
    secret.write_text(f"  {password}\n")  # as a Secret volume may hold it
    secret.chmod(0o444)
    folder = migrations({"001_a.up.sql": "SELECT 1;\n", "001_a.down.sql": "SELECT 1;\n"})
    result = run(url.replace(password, "stale-password"), folder, "status",
                 DATABASE_PASSWORD_FILE=str(secret))
    assert result.code == 0, result.stderr
    assert password not in result.stderr + result.stdout
