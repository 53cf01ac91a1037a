"""Where the platform keeps its local state (stack, caches, lake, registry).

`PRECISE_HOME` wins when set. Otherwise a source checkout keeps everything in `<repo>/.precise`
(ignored by git), and an installed package uses `~/.cache/precise`. Jobs submitted with
`ray job submit --working-dir .` run from a copy of the repo, so they must not derive paths from
the current directory: they import this module, which resolves the same home as the submitter.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

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


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], sync_folder: bool = True) -> None:
    """Replace `path` with what `write` writes to a binary file, so that a reader (or a crash) sees
    the old or the new content, never a part: temp file in the same folder, fsync, rename, then
    (with `sync_folder`) fsync the folder so the rename itself survives a crash."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not sync_folder:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write` of UTF-8 text: pointers (LATEST), manifests and state files."""
    atomic_write(path, lambda handle: handle.write(text.encode()))
