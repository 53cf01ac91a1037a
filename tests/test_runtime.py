"""One code-shipping mechanism (precise.runtime) for every job, the Serve app, KubeRay and Docker;
training's Ray Train scaling from config; one source of Serve scaling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from precise.config import load_config
from precise.runtime import code_modules, deploy_serve, runtime_env

REPO = Path(__file__).resolve().parents[1]


def test_runtime_env_ships_the_package_this_process_runs():
    import precise

    env = runtime_env()
    (module,) = env["py_modules"]
    assert Path(module) == Path(precise.__file__).resolve().parent
    assert (Path(module) / "config.py").is_file() and "env_vars" not in env
    with_serve = code_modules(with_serve=True)
    assert with_serve[0] == module and (Path(with_serve[1]) / "app.py").is_file()
    assert runtime_env(env_vars={"A": "1"})["env_vars"] == {"A": "1"}


def test_only_precise_runtime_initialises_ray():
    """Every job (universal, targeted, predict, ingest, pipeline, deploy_serve) reaches Ray through
    precise.runtime.connect_ray: a bare `ray.init(` anywhere else would start workers without the
    code (on nodes without the project they fail; in the image they run the image's copy)."""
    offenders = []
    for folder in ("platform/precise", "jobs", "serve"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "runtime.py" and path.parent.name == "precise":
                continue
            if re.search(r"^[^#`]*\bray\.init\(", path.read_text(), re.M):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


@pytest.mark.parametrize("use_gpu", [False, True])
def test_training_scaling_comes_from_config(use_gpu):
    from precise.train.ray_job import scaling_config

    config = load_config(None)
    config.training.num_workers, config.training.cpus_per_worker, config.training.use_gpu = 3, 1.5, use_gpu
    scaling = scaling_config(config)
    assert (scaling.num_workers, scaling.use_gpu) == (3, use_gpu)
    assert scaling.resources_per_worker == {"CPU": 1.5, **({"GPU": 1} if use_gpu else {})}
    assert scaling_config(config, num_workers=2).num_workers == 2  # --workers overrides


def test_cluster_config_trains_on_two_workers_and_sets_serve_scaling():
    config = load_config(REPO / "configs" / "cluster.yaml")
    assert config.training.num_workers >= 2
    assert config.serve.recall.max_replicas >= 2  # replicas spread over the worker nodes


@pytest.mark.parametrize("name", ["serve.yaml", "serve-docker.yaml"])
def test_serve_configs_set_no_replica_scaling(name):
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    assert all("deployments" not in app for app in raw["applications"]), \
        f"configs/{name}: replica scaling belongs in the platform config (serve.recall), one source"


def test_deploy_serve_refuses_a_second_source_of_scaling():
    raw = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())
    raw["applications"][0]["deployments"] = [{"name": "Recall", "num_replicas": 3}]
    with pytest.raises(ValueError, match="Serve scaling comes from the platform config"):
        deploy_serve(load_config(None), raw)


def test_kuberay_jobs_run_job_scripts_that_connect_through_precise_runtime():
    """The RayJob entrypoints are jobs/*.py run in the image from /app: their drivers ship /app's
    `precise` as py_modules (what the harness checks on nodes without the project)."""
    for path in sorted((REPO / "configs" / "kuberay").glob("rayjob-*.yaml")):
        entrypoint = yaml.safe_load(path.read_text())["spec"]["entrypoint"]
        script = re.search(r"/app/(jobs/\w+\.py)", entrypoint)
        assert script, f"{path.name}: entrypoint {entrypoint!r} is not a jobs/ script"
        assert "from _common import run_job" in (REPO / script.group(1)).read_text()
