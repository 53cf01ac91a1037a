"""How the platform's code reaches Ray workers: one mechanism for every job, the Serve app, the
local multi-host harness, KubeRay and the Docker image.

A Ray node needs the dependencies (pyproject.toml), never the project: every driver joins the
cluster through `connect_ray`, whose runtime environment ships the driver's own copy of the
`precise` package (and, for the Serve app, of `serve/`) as `py_modules`. Ray uploads each copy to
the cluster once (content-addressed) and puts it first on the workers' import path, so the code
that runs is the code that was submitted (`ray job submit --working-dir .`, or the image's /app),
never a copy that happens to be installed on a node.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import precise

PACKAGE_DIR = Path(precise.__file__).resolve().parent


def serve_package_dir() -> Path | None:
    """The repository's `serve/` package (the Serve app) next to this `platform/`, if present."""
    candidate = PACKAGE_DIR.parents[1] / "serve"
    return candidate if (candidate / "app.py").is_file() else None


def code_modules(with_serve: bool = False) -> list[str]:
    """The local package directories a runtime environment ships: `precise` (+ `serve`)."""
    modules = [str(PACKAGE_DIR)]
    if with_serve:
        serve_dir = serve_package_dir()
        if serve_dir is None:
            raise FileNotFoundError(f"no serve/app.py next to {PACKAGE_DIR.parents[1]}: cannot ship the Serve app")
        modules.append(str(serve_dir))
    return modules


def runtime_env(with_serve: bool = False, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime environment of every driver (`ray.init(runtime_env=...)`)."""
    env: dict[str, Any] = {"py_modules": code_modules(with_serve)}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def connect_ray(with_serve: bool = False, env_vars: dict[str, str] | None = None, **init_kwargs: Any) -> None:
    """Join the Ray cluster (RAY_ADDRESS, as `ray job submit` sets it), or start a local one, with
    the runtime environment that ships this code. A no-op when Ray is already initialised (the
    caller chose its runtime environment; tests do so on a single-node cluster)."""
    import ray

    if ray.is_initialized():
        return
    init_kwargs.setdefault("logging_level", logging.WARNING)
    # PRECISE_HOME decides where the store is when storage.root is unset: workers must agree with
    # the driver (a worker node's environment may not have it).
    shipped = {k: os.environ[k] for k in ("PRECISE_HOME",) if k in os.environ}
    ray.init(runtime_env=runtime_env(with_serve, {**shipped, **(env_vars or {})}), **init_kwargs)


def deploy_serve(config: Any, serve_config: dict[str, Any], host: str | None = None,
                 port: int | None = None) -> dict[str, Any]:
    """Run the recall app of `serve_config` (a configs/serve.yaml mapping) with the platform config
    `config` (a PreciseConfig: storage, kafka, serve sections, scaling included) on the connected
    cluster; the replicas import the code shipped by `connect_ray(with_serve=True)`."""
    import tempfile

    import yaml
    from ray import serve

    if len(serve_config["applications"]) != 1:
        raise ValueError("the Serve config must hold exactly one application (the recall service)")
    (application,) = serve_config["applications"]
    if application.get("deployments"):
        raise ValueError("Serve scaling comes from the platform config (serve.recall / serve.ingress), "
                         "not from `deployments:` in the Serve config")
    # the replicas inherit the driver's runtime environment: the shipped code and these env_vars
    env_vars = {k: str(v) for k, v in ((application.get("runtime_env") or {}).get("env_vars") or {}).items()}
    connect_ray(with_serve=True, env_vars=env_vars)
    from serve.app import app  # after connect_ray: the same copy the replicas get

    http = {**serve_config.get("http_options", {}), **({"host": host} if host else {}),
            **({"port": port} if port else {})}
    # The app's `config` arg is a path read in the replicas: write this platform config where the
    # store is (a filesystem every node mounts), so replicas on any node read the same one.
    root = Path(config.storage.resolved_root())
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=root, prefix="serve-config-", delete=False) as handle:
        yaml.safe_dump(config.model_dump(mode="json"), handle)
    args = {k: v for k, v in (application.get("args") or {}).items()
            # the platform config says where the store and Kafka are, and which task: drop the file's
            # site-specific args
            if k not in {"config", "root", "kafka_bootstrap", "events_topic", "task"}}
    serve.start(http_options=http, proxy_location=serve_config.get("proxy_location", "EveryNode"))
    name = application.get("name", "precise")
    serve.run(app({**args, "config": handle.name}), name=name, route_prefix=application.get("route_prefix", "/"),
              blocking=False)
    return {"app": name, "host": http.get("host"), "port": http.get("port"), "config": handle.name,
            "modules": code_modules(with_serve=True)}

