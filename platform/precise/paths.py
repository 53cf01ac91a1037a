"""Where the platform keeps its local state (stack, caches, lake, registry).

`PRECISE_HOME` wins when set. Otherwise a source checkout keeps everything in `<repo>/.precise`
(ignored by git), and an installed package uses `~/.cache/precise`. Jobs submitted with
`ray job submit --working-dir .` run from a copy of the repo, so they must not derive paths from
the current directory: they import this module, which resolves the same home as the submitter.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path | None:
    """The source checkout holding this package, or None when installed as a wheel."""
    candidate = _PACKAGE_DIR.parents[1]
    return candidate if (candidate / "pyproject.toml").is_file() else None


def precise_home() -> Path:
    """Root folder of all local state; created on first use."""
    env = os.environ.get("PRECISE_HOME")
    if env:
        home = Path(env).expanduser()
    elif (root := repo_root()) is not None:
        home = root / ".precise"
    else:
        home = Path.home() / ".cache" / "precise"
    home.mkdir(parents=True, exist_ok=True)
    return home.resolve()


def cache_dir(name: str) -> Path:
    """A named cache folder under the home (e.g. `kafka-jars`, `token-embeddings`)."""
    path = precise_home() / "cache" / name
    path.mkdir(parents=True, exist_ok=True)
    return path
