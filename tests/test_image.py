"""The container image, built and run for real (SPEC §7, issue 4).

The image is built once per session with buildah from the repository's Dockerfile on the
stand-in base image (`bash .ci/image-tools` creates it; docs/deploying.md, "How CI tests
all this"), then run with podman the way Kubernetes runs it under the restricted profile:
uid 10001, read-only root file system (no tmpfs either), all capabilities dropped, no new
privileges, `--network host` to reach the test PostgreSQL on 127.0.0.1.

    pytest -m image tests/test_image.py

MIGRATION_RUNNER_BASE_IMAGE overrides the base (e.g. python:3.12-slim-bookworm where a
registry is reachable). Outside CI the image tests skip when buildah or podman is absent;
with CI set they fail instead, so a green CI always means the image really ran.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Db, Result, Runner, parse_events, wait_until
from tests.test_production import tls_cluster_fixture, tls_url  # noqa: F401  (a fixture)

STANDIN = "localhost/python-standin:test"
TAG = "localhost/migration-runner:test"
UID = "10001"
FORWARD = re.compile(r"^(\d{1,18})_([A-Za-z0-9_-]+?)(\.up)?\.sql$")
# The baked PACS folder is in sqlx's layout: `auto` keeps the app's history (SPEC §8).
HISTORY = ("SELECT version, encode(checksum, 'hex'), success, installed_on "
           "FROM public._sqlx_migrations ORDER BY 1")
_names = itertools.count()


def tool(name: str) -> str | None:
    """A tool from the active venv (pip-installed binaries) or PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def require(*names: str) -> None:
    missing = [n for n in names if tool(n) is None]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed (run `bash .ci/image-tools`)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test, but {reason}")
    pytest.skip(reason)


# --- static checks: no container engine needed ---------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "templates/app-repo/Dockerfile.migrations"])
def test_dockerfile_lints_clean(dockerfile: str) -> None:
    require("hadolint")
    proc = subprocess.run(
        [tool("hadolint"), "--no-color", str(ROOT / dockerfile)],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def _lock() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {name: (version, hashes)}."""
    text = (ROOT / "requirements.lock").read_text()
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\;]+)", block)
        if m:
            name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            entries[name] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def test_lock_pins_every_dependency_with_hashes() -> None:
    """requirements.lock must follow pyproject.toml: regenerate it when dependencies change
    (the command is in its header)."""
    from packaging.requirements import Requirement

    lock = _lock()
    assert lock, "requirements.lock has no pins"
    for name, (version, hashes) in lock.items():
        assert hashes, f"{name}=={version} has no --hash in requirements.lock"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    for spec in wanted:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in lock, f"{spec} (pyproject.toml) is not pinned in requirements.lock"
        assert req.specifier.contains(lock[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={lock[name][0]}, outside {spec} (pyproject.toml)"
        )
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary
            assert f"{name}-{extra}" in lock, f"{name}[{extra}] needs {name}-{extra} in the lock"


# --- the image ---------------------------------------------------------------------------


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's output capture, so that the measurement shows in CI's log."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(line, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    require("buildah", "podman")
    base = os.environ.get("MIGRATION_RUNNER_BASE_IMAGE", STANDIN)
    if base == STANDIN and podman("image", "exists", STANDIN, check=False).returncode != 0:
        subprocess.run(["bash", str(ROOT / ".ci" / "image-tools")], check=True, timeout=900)
    revision = (
        subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    # chroot isolation: the default runtime fails on these machines' hybrid cgroups.
    # --layers caches the dependency layer across sessions while requirements.lock is unchanged.
    cmd = [
        "buildah",
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        f"REVISION={revision}",
        "-f",
        str(ROOT / "Dockerfile"),
        "-t",
        TAG,
        str(ROOT),
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    assert proc.returncode == 0, (
        f"buildah bud failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    )
    size = int(podman("image", "inspect", TAG, "--format", "{{.Size}}").stdout.strip())
    base_size = int(podman("image", "inspect", base, "--format", "{{.Size}}").stdout.strip())
    _report(
        request,
        f"\nimage {TAG}: {size / 1e6:.1f} MB ({(size - base_size) / 1e6:.1f} MB over "
        f"the base {base}), built in {took:.1f} s",
    )
    return TAG


@pytest.fixture
def termdir(tmp_path: Path) -> Path:
    """A host folder the container user may write its termination message into."""
    d = tmp_path / "term"
    d.mkdir()
    d.chmod(0o777)
    return d


# runc: crun fails on this machine's hybrid cgroups; explicit ulimits: no CAP_SYS_RESOURCE.
PODMAN_RUN = ("podman", "run", "--rm", "--runtime", "runc",
              "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")


def run_args(
    image: str,
    url: str,
    *,
    name: str | None = None,
    mounts: tuple[tuple[Path, str], ...] = (),
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> list[str]:
    """`podman run` as the restricted Pod Security profile would run the container."""
    cmd = [
        *PODMAN_RUN,
        "--network",
        "host",
        "--user",
        f"{UID}:{UID}",
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--name",
        name or f"mr-test-{os.getpid()}-{next(_names)}",
        "-e",
        f"DATABASE_URL={url}",
        "-e",
        "MIGRATE_LOG_FORMAT=json",
    ]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    for host, target in mounts:
        cmd += ["-v", f"{host}:{target}"]
    return [*cmd, image, *args]


def run_container(*args: Any, timeout: float = 120, **kwargs: Any) -> Result:
    proc = subprocess.run(
        run_args(*args, **kwargs), capture_output=True, text=True, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, parse_events(proc.stderr))


class Container(Runner):
    """A container in the background whose log (stderr) is read line by line as it comes."""

    def __init__(self, cmd: list[str]) -> None:  # Runner's reading machinery, podman's process
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.start_readers()


def repo_forward_files() -> dict[int, Path]:
    files = {}
    for path in sorted((ROOT / "migrations").glob("*.sql")):
        m = FORWARD.match(path.name)
        if m and not path.name.endswith("_rollback.sql"):
            files[int(m.group(1))] = path
    return files


@pytest.mark.image
def test_image_metadata(image: str) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["migration-runner"]
    assert config["Cmd"] == ["migrate"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["MIGRATIONS_DIR"] == "/migrations"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    labels = config.get("Labels") or {}
    for key in ("title", "description", "version", "revision", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), (
            f"label org.opencontainers.image.{key} missing"
        )
    # Nothing of the build stage: no installer, no build backend, no sources in the image.
    probe = subprocess.run(
        [
            *PODMAN_RUN,
            "--read-only",
            "--network",
            "none",
            "--entrypoint",
            "python",
            image,
            "-c",
            "import importlib.util as u, os, sys; "
            "print(sys.prefix, os.path.exists('/src'), *(u.find_spec(m) is not None "
            "for m in ('pip', 'setuptools', 'psycopg', 'pglast', 'structlog', 'tenacity', "
            "'runner')))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [
        "/opt/venv",
        "False",
        "False",
        "False",
        "True",
        "True",
        "True",
        "True",
        "True",
    ], probe.stdout


@pytest.mark.image
def test_first_run_applies_baked_migrations_second_is_a_no_op(image: str, db: Db) -> None:
    expected = repo_forward_files()
    assert expected, "no forward migration files in migrations/"

    first = run_container(image, db.url)
    assert first.code == 0, first.stderr
    applied = [e for e in first.events if e.get("event") == "migration_applied"]
    assert [e["version"] for e in applied] == sorted(expected), first.stderr
    assert [e["file"] for e in applied] == [expected[v].name for v in sorted(expected)]
    assert first.event("migrations_complete")["applied"] == len(expected)
    assert first.event("history_format")["format"] == "sqlx"
    rows = db.query(HISTORY)
    # The image carries exactly the repository's files: same versions, same checksums
    # (sqlx's: SHA-384 of the file's bytes).
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (v, hashlib.sha384(expected[v].read_bytes()).hexdigest(), True)
        for v in sorted(expected)
    ]

    second = run_container(image, db.url)
    assert second.code == 0, second.stderr
    assert "migration_applied" not in second.names(), second.stderr
    assert "migration_started" not in second.names(), second.stderr
    assert second.event("migrations_complete")["applied"] == 0
    assert db.query(HISTORY) == rows
    assert db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


@pytest.mark.image
def test_broken_migration_mounted_over_baked_ones_exits_1_with_termination_message(
    image: str, db: Db, migrations: Any, tmp_path: Path, termdir: Path
) -> None:
    folder = migrations(
        {
            "001_ok.sql": "CREATE TABLE image_ok (id int PRIMARY KEY);\n",
            "002_broken.sql": "-- refers to a table nobody created\n"
            "CREATE TABLE image_half (id int);\n"
            "INSERT INTO missing_table VALUES (1);\n",
        }
    )
    # As the kubelet does: an existing file mounted at the default /dev/termination-log.
    kubelet_log = tmp_path / "termination-log"
    kubelet_log.touch()
    kubelet_log.chmod(0o666)
    result = run_container(
        image, db.url, mounts=((folder, "/migrations:ro"), (kubelet_log, "/dev/termination-log"))
    )
    assert result.code == 1, result.stderr
    failed = result.event("migration_failed")
    assert (failed["version"], failed["file"], failed["sqlstate"]) == (2, "002_broken.sql", "42P01")
    assert failed["line"] == 3, failed
    message = kubelet_log.read_text()
    assert message.strip() and "\n" not in message.strip(), repr(message)
    assert "002_broken.sql" in message and "missing_table" in message, message
    assert len(message.encode()) <= 4096
    # 001 committed on its own; nothing of 002 remains, and the baked files were not used.
    assert db.query("SELECT version, status FROM public.migration_history ORDER BY version") == [
        (1, "applied")
    ]
    assert db.table_exists("public.image_ok")
    assert not db.table_exists("public.image_half")

    # A path set explicitly (a mounted folder) is created by the runner.
    again = run_container(
        image,
        db.url,
        mounts=((folder, "/migrations:ro"), (termdir, "/tmp/term")),
        env={"MIGRATE_TERMINATION_LOG": "/tmp/term/log"},
    )
    assert again.code == 1, again.stderr
    assert "002_broken.sql" in (termdir / "log").read_text()


@pytest.mark.image
def test_sigterm_during_a_long_migration_exits_143(
    image: str, db: Db, migrations: Any, termdir: Path
) -> None:
    folder = migrations(
        {"001_slow.sql": "CREATE TABLE image_slow (id int);\nSELECT pg_sleep(60);\n"}
    )
    name = f"mr-test-sigterm-{os.getpid()}-{next(_names)}"
    container = Container(
        run_args(
            image,
            db.url,
            name=name,
            mounts=((folder, "/migrations:ro"), (termdir, "/tmp/term")),
            env={"MIGRATE_TERMINATION_LOG": "/tmp/term/log"},
        )
    )
    try:
        started = container.wait_for_event("migration_started", timeout=60)
        assert started["version"] == 1
        sleeping = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep%%' AND application_name = 'migration-runner'"
        )
        wait_until(
            lambda: db.scalar(sleeping, (db.name,)) == 1, timeout=30, what="pg_sleep running"
        )

        killed = time.monotonic()
        podman("kill", "--signal", "TERM", name)
        result = container.finish(timeout=60)
        took = time.monotonic() - killed
    finally:
        if container.proc.poll() is None:
            podman("kill", name, check=False)
            container.proc.kill()
            container.proc.wait()
    assert result.code == 143, result.stderr
    assert took < 20, f"exit took {took:.1f}s after SIGTERM (Kubernetes' grace period is 30 s)"
    assert "interrupted" in result.names(), result.stderr
    assert (termdir / "log").read_text().strip(), "no termination message"
    # The statement was cancelled and rolled back, the lock released, the attempt audited.
    wait_until(lambda: db.scalar(sleeping, (db.name,)) == 0, timeout=10, what="pg_sleep cancelled")
    wait_until(
        lambda: db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0,
        timeout=10,
        what="advisory lock released",
    )
    assert not db.table_exists("public.image_slow")
    assert db.scalar("SELECT count(*) FROM public.migration_history") == 0
    assert db.query("SELECT version, success FROM public.migration_audit") == [(1, False)]


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_containers() -> Iterator[None]:
    yield
    if shutil.which("podman"):
        ids = podman(
            "ps", "-aq", "--filter", f"name=mr-test-.*-{os.getpid()}-", check=False
        ).stdout.split()
        if ids:
            podman("rm", "-f", *ids, check=False)


# --- the app's migrations image (templates/app-repo/Dockerfile.migrations, issue 22 B) ---------


def build_migrations_image(runner_image: str, app_repo: Path,
                           tag: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", "bud", "--isolation", "chroot", "--build-arg", f"RUNNER_IMAGE={runner_image}",
         "-f", str(ROOT / "templates" / "app-repo" / "Dockerfile.migrations"), "-t", tag,
         str(app_repo)],
        capture_output=True, text=True, timeout=900)


@pytest.mark.image
def test_the_apps_migrations_image_holds_its_folder_only_and_migrates(
        image: str, db: Db, tmp_path: Path) -> None:
    """Built FROM the runner image with the app repository's migrations/: the runner's own
    baked-in files are gone, the app's applied, as the prod Job runs it."""
    repo = tmp_path / "app"
    (repo / "migrations").mkdir(parents=True)
    (repo / "migrations" / "001_app_notes.up.sql").write_text(
        "CREATE TABLE app_notes (id bigint PRIMARY KEY, note text);\n")
    (repo / "migrations" / "001_app_notes.down.sql").write_text("DROP TABLE app_notes;\n")
    (repo / "migrations" / "schema.json").write_text("{}")  # not a migration: left out
    tag = "localhost/app-migrations:test"
    built = build_migrations_image(image, repo, tag)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    listed = subprocess.run([*PODMAN_RUN, "--entrypoint", "ls", tag, "-1", "/migrations"],
                            capture_output=True, text=True, timeout=120)
    assert listed.stdout.split() == ["001_app_notes.down.sql", "001_app_notes.up.sql"], listed
    result = run_container(tag, db.url, args=("migrate",))
    assert result.code == 0, result.stderr
    assert db.table_exists("public.app_notes") and not db.table_exists("security.users")
    assert db.scalar("SELECT count(*) FROM _sqlx_migrations") == 1, "sqlx, as the app keeps it"

    # A folder the runner refuses fails the build, not the rollout.
    (repo / "migrations" / "002_bad.up.sql").write_text("CREATE TABLE bad (id int;\n")
    (repo / "migrations" / "002_bad.down.sql").write_text("DROP TABLE bad;\n")
    refused = build_migrations_image(image, repo, "localhost/app-migrations:bad")
    assert refused.returncode != 0
    assert "002_bad.up.sql" in refused.stdout + refused.stderr


@pytest.mark.image
def test_verify_full_in_the_read_only_non_root_image(
        image: str, tls_cluster: tuple[Any, Path], tmp_path: Path) -> None:
    """The CA bundle mounted read-only and named by PGSSLROOTCERT, as k8s/overlays/prod/rds-tls
    mounts it: verified; a URL naming another host: exit 3, saying why."""
    cluster, ca = tls_cluster
    bundle = tmp_path / "rds"
    bundle.mkdir()
    shutil.copy(ca, bundle / "global-bundle.pem")
    mounts = ((bundle, "/etc/ssl/rds:ro"),)
    env = {"PGSSLROOTCERT": "/etc/ssl/rds/global-bundle.pem", "MIGRATE_WAIT_TIMEOUT": "30s"}
    ok = run_container(image, tls_url(cluster, "localhost"), mounts=mounts, env=env,
                       args=("status",))
    assert ok.code == 0, ok.stderr
    wrong = run_container(image, tls_url(cluster, "127.0.0.1"), mounts=mounts, env=env,
                          args=("status",))
    assert wrong.code == 3, wrong.stderr
    assert "failed TLS verification" in wrong.events[-1]["error"]
