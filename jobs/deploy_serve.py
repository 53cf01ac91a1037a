"""Deploy the recall service (serve/app.py) from a driver that ships the code (precise.runtime).

    python jobs/deploy_serve.py --config configs/cluster.yaml [--serve-config configs/serve.yaml]
    ray job submit --working-dir . -- python jobs/deploy_serve.py --config configs/cluster.yaml

The Serve side (http_options, the application's name, route, args and env_vars) comes from
`--serve-config` (configs/serve.yaml); replica counts and sizes from the platform config's
`serve.recall` / `serve.ingress` (the one source of Serve scaling). Unlike `serve deploy`, the
cluster's nodes need not have the project: `precise` and `serve` travel as `py_modules` of this
driver's runtime environment, which the replicas inherit. Returns once the app is RUNNING; the app
outlives this driver (`serve shutdown` removes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from _common import run_job

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(1, str(_REPO))  # `serve` (the app package) of this checkout


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):  # noqa: ANN001, ANN202
        parser.add_argument("--serve-config", default=str(_REPO / "configs" / "serve.yaml"),
                            help="Serve config (http_options, the application's args)")
        parser.add_argument("--host", help="overrides http_options.host")
        parser.add_argument("--port", type=int, help="overrides http_options.port")

    def body(config, args):  # noqa: ANN001, ANN202
        from precise.runtime import deploy_serve

        serve_config = yaml.safe_load(Path(args.serve_config).read_text())
        if not isinstance(serve_config, dict) or not serve_config.get("applications"):
            raise ValueError(f"{args.serve_config}: no `applications` in this Serve config")
        return deploy_serve(config, serve_config, host=args.host, port=args.port)

    return run_job(__doc__, arguments, body, argv)


if __name__ == "__main__":
    sys.exit(main())
