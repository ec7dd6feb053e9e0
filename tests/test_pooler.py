"""Behind PgBouncer in transaction mode a session lock guards nothing: exit 2 (SPEC §3)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Db, run
from tests.pg import Cluster, free_port

Files = Callable[[dict[str, str | bytes]], Path]


def _pgbouncer() -> str:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(found):
        pytest.fail("pgbouncer is not installed: run `bash .ci/ensure-postgres`")
    return found


@pytest.fixture
def bouncer(cluster: Cluster) -> Iterator[int]:
    """A PgBouncer in transaction mode in front of the test cluster; its port."""
    yield from pgbouncer(cluster, "transaction")


def pgbouncer(cluster: Cluster, mode: str) -> Iterator[int]:
    """A PgBouncer in `mode` in front of the test cluster; its port."""
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="mr-pgbouncer-"))  # readable by `postgres`
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={cluster.port} user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = any\npool_mode = {mode}\ndefault_pool_size = 4\n"
        f"logfile = {folder}/pgbouncer.log\npidfile = {folder}/pgbouncer.pid\n")
    cmd = [_pgbouncer(), str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(folder, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"pgbouncer did not start: {out}")
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


def test_transaction_pooler_is_refused_with_exit_2(db: Db, bouncer: int,
                                                   migrations: Files) -> None:
    folder = migrations({"1_a.sql": "CREATE TABLE a (id int);"})
    url = f"postgresql://postgres@127.0.0.1:{bouncer}/{db.name}"
    result = run(url, folder)
    assert result.code == 2, result.stderr
    assert "transaction-pooling proxy" in result.events[-1]["error"]
    assert not db.table_exists("a")
    assert not db.table_exists("migration_history")
