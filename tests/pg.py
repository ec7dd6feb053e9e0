"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir, random port.

postgres refuses to run as root, so as root the server runs as the `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg


def bindir() -> Path:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    except (OSError, subprocess.CalledProcessError):
        pass
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parts[-3]))
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries found (apt-get install postgresql)")
    return versions[-1].parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Cluster:
    """One server; `start`/`stop` may be called repeatedly (fault tests)."""

    def __init__(self, port: int | None = None, password: str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        """`settings`: extra server settings for every start, e.g. {"lc_messages": ...}."""
        self.bin = bindir()
        self.settings = settings or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="mr-pg-"))
        self.data = self.tmp / "data"
        self.port = port or free_port()
        self.password = password
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres")
        cmd = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
               "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"]
        if password:
            pwfile = self.tmp / "pw"
            pwfile.write_text(password)
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres")
            cmd += ["-A", "scram-sha-256", f"--pwfile={pwfile}"]
        else:
            cmd += ["-A", "trust"]
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True)

    def start(self, wait: bool = True) -> None:
        opts = (f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 "
                "-c max_connections=200 -c fsync=off -c full_page_writes=off")
        opts += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.tmp / "pg.log"),
               "-o", opts, "start"]
        cmd.insert(-1, "-w" if wait else "-W")
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True)

    def running(self) -> bool:
        return subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data),
                                            "status"]), capture_output=True).returncode == 0

    def hold_in_recovery(self) -> None:
        """The next start stays in recovery, answering every connection with 57P03
        ("the database system is not yet accepting connections"), until `promote`."""
        signal = self.data / "standby.signal"
        signal.touch()
        if os.geteuid() == 0:
            shutil.chown(signal, "postgres")
        self.settings["hot_standby"] = "off"

    def promote(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-W",
                                     "promote"]), check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w",
                                     "-m", "immediate", "stop"]), capture_output=True)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def url(self, dbname: str = "postgres", user: str = "postgres",
            password: str | None = None) -> str:
        password = password if password is not None else self.password
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(dbname), autocommit=True)
