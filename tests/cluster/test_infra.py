"""The deployment files are valid before anyone applies them: every Kubernetes manifest against the KubeRay
CRD schema, the compose file against the compose-spec schema, the ``ray up`` file against Ray's own
cluster schema; and none of them puts a credential where a job or a log would carry it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from components.training.launch import SECRET_NAME

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SCHEMAS = INFRA / "schemas"
# (apiVersion, kind) -> vendored schema (see infra/schemas/README.md for where each comes from)
KINDS = {
    ("ray.io/v1", "RayCluster"): "raycluster-ray.io-v1.json",
    ("ray.io/v1", "RayJob"): "rayjob-ray.io-v1.json",
}
CREDENTIAL = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN")  # names whose value is a credential
MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))


def strict(schema: dict) -> dict:
    """The CRD schema with unknown fields rejected, as ``kubectl apply`` (strict field validation) does:
    every object that lists its properties and neither allows extra ones nor preserves unknown fields."""
    out = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(out)
    return out


def validator(doc: dict) -> jsonschema.Draft7Validator:
    name = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
    assert name, f"no schema for {doc.get('apiVersion')} {doc.get('kind')}"
    return jsonschema.Draft7Validator(strict(json.loads((SCHEMAS / name).read_text())))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def errors(doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(doc).iter_errors(doc)]


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"]
    spec = spec.get("rayClusterSpec", spec)
    groups = [spec.get("headGroupSpec", {}), *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g.get("template", {}).get("spec", {}).get("containers", [])]


def test_there_are_manifests_for_the_cluster_and_both_jobs():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in documents(p))
    assert kinds == [("RayCluster", "harmonize"), ("RayJob", "harmonize-ablate"), ("RayJob", "harmonize-train")]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kuberay_schema(path):
    for doc in documents(path):
        assert errors(doc) == []
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_the_schema_check_rejects_a_misspelt_field_and_a_wrong_type():
    """The check above can fail: a typo and a wrong type are reported with their path."""
    [cluster] = documents(INFRA / "k8s" / "raycluster.yaml")
    typo = copy.deepcopy(cluster)
    typo["spec"]["enableInTreeAutoscalling"] = typo["spec"].pop("enableInTreeAutoscaling")
    assert any("enableInTreeAutoscalling" in e for e in errors(typo))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert any(e.startswith("spec.workerGroupSpecs.0.maxReplicas") for e in errors(wrong))


def test_cluster_autoscales_uses_token_auth_and_reads_credentials_from_secrets():
    [cluster] = documents(INFRA / "k8s" / "raycluster.yaml")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    for c in containers(cluster):
        assert {"secretRef": {"name": "harmonize-credentials"}} in c["envFrom"]
        literal = [e["name"] for e in c.get("env", []) if "value" in e]
        assert not [n for n in literal if SECRET_NAME.search(n)]


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-ablate.yaml"])
def test_jobs_name_their_stage_use_shared_storage_and_carry_no_secret(name):
    [job] = documents(INFRA / "k8s" / name)
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "harmonize"}
    assert spec["metadata"]["stage"] in spec["entrypoint"]
    assert "storage.root=s3://" in spec["entrypoint"]
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML", "") or "{}") or {}
    assert not [k for k in runtime_env.get("env_vars", {}) if SECRET_NAME.search(k)]


def test_compose_matches_the_compose_spec():
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    problems = [f"{list(e.absolute_path)}: {e.message}"
                for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]  # fmt: skip
    assert problems == []
    bad = copy.deepcopy(compose)
    bad["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_compose_mlflow_is_postgres_backed_proxies_s3_artifacts_and_requires_login():
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    services = compose["services"]
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri \"postgresql+psycopg2://mlflow@postgres" in mlflow
    # no password on the command line (the process list) or in the auth file: libpq reads PGPASSWORD
    assert "PASSWORD" not in mlflow and services["mlflow"]["environment"]["PGPASSWORD"] == "${POSTGRES_PASSWORD}"
    assert "--artifacts-destination \"s3://" in mlflow and "--serve-artifacts" in mlflow
    assert "--app-name basic-auth" in mlflow
    assert "create-bucket" in services["mlflow"]["depends_on"]
    assert "minio" not in json.dumps(compose).lower()
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)  # never on a public address
    # every variable the file needs is in .env.example, and no secret is written in the file itself
    needed = set(re.findall(r"\$\{(\w+)", (INFRA / "mlflow" / "compose.yaml").read_text()))
    example = dict(line.split("=", 1) for line in (INFRA / "mlflow" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))  # fmt: skip
    assert needed <= set(example) | {"SEAWEEDFS_TAG"}
    for s in services.values():
        env = s.get("environment", {})
        assert all(str(v).startswith("${") for k, v in env.items() if CREDENTIAL.search(k)), env


def test_ray_up_config_passes_rays_own_validation():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((INFRA / "ray-up-aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["available_node_types"]["gpu"]["resources"]["GPU"] > 0
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"].values()
    assert all("IamInstanceProfile" in n["node_config"] for n in nodes)  # node roles, no keys
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)", json.dumps(config))
    bad = {**config, "max_worker": 4}
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(bad))


def test_dockerignore_keeps_environments_data_and_runs_out_of_the_image():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for entry in (".venv", "data", "mlruns*", ".dvc/cache", "benchmarks/runs", ".git", "**/.env"):
        assert entry in ignored
    dockerfile = (INFRA / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+)", dockerfile, re.M)
    assert copied and not [c for c in copied if any(c.startswith(i.rstrip("*")) for i in ignored)]
