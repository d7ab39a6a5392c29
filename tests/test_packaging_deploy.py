"""The deployment files say what docs/operations.md promises: checked by parsing them (no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

DEPLOY = REPO / "deploy"


# ------------------------------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_runtime_stage_is_slim_non_root_with_a_healthcheck() -> None:
    steps = dockerfile_instructions((REPO / "Dockerfile").read_text())
    froms = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    final = steps[froms[-1] :]
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    base = final[0][1].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"])
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert dict(final)["ENTRYPOINT"] == '["atlas-log"]' and dict(final)["CMD"] == '["run"]'
    health = dict(final)["HEALTHCHECK"]
    assert "atlas-log health --max-age" in health and "--start-period=" in health
    env = " ".join(a for w, a in final if w == "ENV")
    assert "ATLAS_LOG_HEALTH_FILE=/tmp/" in env
    assert not any(w == "ADD" for w, _ in steps)
    assert all("--no-cache-dir" in a for w, a in steps if w == "RUN" and "pip " in a)


def test_dockerignore_lets_through_only_what_the_build_copies() -> None:
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*" and {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)
    copied = {a.split()[0] for w, a in dockerfile_instructions((REPO / "Dockerfile").read_text()) if w == "COPY"}
    assert copied <= {"pyproject.toml", "src", "--from=build"}


# ------------------------------------------------------------------------------------------------- Kubernetes
def manifests(layout: str) -> list[dict[str, Any]]:
    folder = DEPLOY / "kubernetes" / layout
    docs: list[dict[str, Any]] = []
    for name in yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]:
        path = folder / name
        if path.is_dir():
            docs += [
                d
                for n in yaml.safe_load((path / "kustomization.yaml").read_text())["resources"]
                for d in yaml.safe_load_all((path / n).read_text())
            ]
        else:
            docs += list(yaml.safe_load_all(path.read_text()))
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def check_pod(pod: dict[str, Any]) -> dict[str, Any]:
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
    assert refs == ["atlas-log-exporter", "atlas-log-credentials"]  # settings, then the Secret
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    return dict(container)


def shard_env(container: dict[str, Any]) -> tuple[str, int]:
    """(the variable holding i, N) from ATLAS_LOG_SHARD = "$(VAR)/N", checking VAR is declared before it."""
    names = [e["name"] for e in container["env"]]
    value = next(e["value"] for e in container["env"] if e["name"] == "ATLAS_LOG_SHARD")
    match = re.fullmatch(r"\$\((\w+)\)/(\d+)", value)
    assert match, value
    assert names.index(match.group(1)) < names.index("ATLAS_LOG_SHARD")  # $(VAR) only sees earlier variables
    return match.group(1), int(match.group(2))


def test_single_deployment_runs_the_loop_with_a_health_probe() -> None:
    docs = manifests("single")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    container = check_pod(deployment["spec"]["template"]["spec"])
    assert container["args"] == ["run"]
    assert container["livenessProbe"]["exec"]["command"][:3] == ["atlas-log", "health", "--max-age"]
    config = one(docs, "ConfigMap")["data"]
    assert config["ATLAS_LOG_HEALTH_FILE"].startswith("/tmp/") and config["ATLAS_LOG_OUTPUT"].startswith("s3://")
    assert not any("SECRET" in key or "PRIVATE" in key for key in config)


def test_statefulset_derives_the_shard_from_the_pod_ordinal() -> None:
    docs = manifests("sharded")
    sts = one(docs, "StatefulSet")
    container = check_pod(sts["spec"]["template"]["spec"])
    variable, count = shard_env(container)
    assert count == sts["spec"]["replicas"] > 1
    source = next(e for e in container["env"] if e["name"] == variable)["valueFrom"]["fieldRef"]["fieldPath"]
    assert source == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert one(docs, "Service")["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"]


def test_cronjob_runs_once_as_an_indexed_job_one_shard_per_index() -> None:
    cron = one(manifests("cronjob"), "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    container = check_pod(job["template"]["spec"])
    assert container["args"] == ["run", "--once"]
    variable, count = shard_env(container)
    assert count == job["completions"] == job["parallelism"]
    source = next(e for e in container["env"] if e["name"] == variable)["valueFrom"]["fieldRef"]["fieldPath"]
    assert source == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("layout", ["single", "sharded", "cronjob"])
def test_kustomize_builds_each_layout(layout: str) -> None:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "kubernetes" / layout)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(proc.stdout)}
    assert {"ConfigMap", "ServiceAccount"} <= kinds


# ---------------------------------------------------------------------------------------------------- systemd
def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_systemd_unit_is_hardened() -> None:
    unit = DEPLOY / "systemd" / "atlas-log-exporter.service"
    s = unit_settings(unit)
    assert s["Service.ExecStart"][0].endswith("atlas-log run")
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "CapabilityBoundingSet": "",
    }.items():
        assert s[f"Service.{key}"] == [value], key
    assert s["Service.EnvironmentFile"] == ["/etc/atlas-log/atlas-log.env"]
    output = next(v.split("=", 1)[1] for v in s["Service.Environment"] if v.startswith("ATLAS_LOG_OUTPUT="))
    assert any(output.startswith(path) for path in s["Service.ReadWritePaths"])
    assert s["Install.WantedBy"] == ["multi-user.target"]
    if shutil.which("systemd-analyze"):
        proc = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
        assert match and float(match.group(1)) <= 2.0, proc.stdout[-500:] + proc.stderr


# ----------------------------------------------------------------------------------------------------- Lambda
class CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """Reads CloudFormation's short-form tags (!Ref, !Sub, !If ...) as {"Fn::...": value}."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def test_lambda_template_schedules_the_handler_with_least_privilege() -> None:
    path = DEPLOY / "lambda" / "template.yaml"
    template = yaml.load(path.read_text(), Loader=CfnLoader)  # noqa: S506 (a SafeLoader subclass)
    resources = template["Resources"]
    by_type = {r["Type"]: r["Properties"] for r in resources.values()}
    function = by_type["AWS::Lambda::Function"]
    assert function["Handler"] == "atlas_log.lambda_handler.handler"
    assert re.fullmatch(r"python3\.1[1-9]", function["Runtime"])
    assert function["Environment"]["Variables"]["ATLAS_LOG_OUTPUT"]["Fn::Sub"].startswith("s3://")
    assert "ATLAS_LOG_SECRET_ARN" in function["Environment"]["Variables"]
    assert by_type["AWS::Events::Rule"]["ScheduleExpression"] == {"Ref": "Schedule"}
    assert template["Parameters"]["Schedule"]["Default"].startswith("rate(")
    assert by_type["AWS::Lambda::Permission"]["Principal"] == "events.amazonaws.com"
    statements = by_type["AWS::IAM::Role"]["Policies"][0]["PolicyDocument"]["Statement"]
    actions = {
        a for s in statements if "Action" in s for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "secretsmanager:GetSecretValue"} <= actions
    assert not any(a.endswith("*") or "Delete" in a for a in actions)


def test_lambda_template_passes_cfn_lint() -> None:
    api = pytest.importorskip("cfnlint.api")
    matches = api.lint((DEPLOY / "lambda" / "template.yaml").read_text(), config=api.ManualArgs(regions=["us-east-1"]))
    assert not matches, "\n".join(str(m) for m in matches)
