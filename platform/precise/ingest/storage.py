"""The storage root of the lake: a local folder or any pyarrow / fsspec filesystem URI.

Every file the lake exposes appears whole or not at all. On a local disk a file is written to a
hidden temporary name in the same folder, flushed to disk, then renamed over its final name
(rename is atomic and replaces an older copy, which is what makes re-running a crashed batch
overwrite instead of duplicate). Data files of a batch are flushed together by one `sync()` before
the ledger that vouches for them is written (an fsync per file cost ~8 ms each, and a historical
replay writes one file per partition and day). On object stores (s3://, gs://, ...) a single PUT is already
atomic, so files are written in place. Hidden names start with "." so that pyarrow and Ray Data
never read a half-written file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in root:
        return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        try:
            import fsspec
        except ImportError:  # pragma: no cover - fsspec ships with ray[data]
            raise ValueError(f"storage root {root!r}: pyarrow does not know this scheme and fsspec is "
                             f"not installed") from None
        try:
            fs_, path = fsspec.core.url_to_fs(root)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"storage root {root!r}: no filesystem for this URI ({exc})") from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs_))
    return fs, path.rstrip("/") or "/"


class Storage:
    """Paths under one root and the few operations the lake needs, all whole-file."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = os.fspath(root)
        self.uri = root
        self.fs, self.root = _filesystem(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list_files(self, folder: str, recursive: bool = True) -> list[str]:
        """Files (not folders) under `folder`, sorted; empty if it does not exist."""
        infos = self.fs.get_file_info(pafs.FileSelector(folder, recursive=recursive, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)

    def write_bytes(self, path: str, data: bytes) -> None:
        self._write(path, lambda out: out.write(data), durable=True)

    def write_parquet(self, path: str, table: pa.Table, durable: bool = True) -> None:
        """Write `table` atomically; `durable=False` defers the flush to disk to a later `sync()`."""
        self._write(path, lambda out: pq.write_table(table, out, compression="zstd"), durable)

    def sync(self) -> None:
        """Flush everything written so far to disk (one syncfs instead of an fsync per file)."""
        if not self.local:
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(self.root if os.path.isdir(self.root) else os.path.dirname(self.root), os.O_RDONLY)
            try:
                if libc.syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            pass
        os.sync()

    def _write(self, path: str, writer: Callable[[IO[bytes]], object], durable: bool) -> None:
        folder, name = path.rsplit("/", 1)
        if not self.local:
            self.fs.create_dir(folder, recursive=True)
            with self.fs.open_output_stream(path) as out:
                writer(out)
            return
        os.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
        try:
            with open(tmp, "wb") as out:
                writer(out)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if durable:
            _fsync_dir(folder)

    def temp_files(self, folder: str) -> list[str]:
        """Leftovers of writes a crash interrupted (local disks only)."""
        return [p for p in self.list_files(folder) if p.rsplit("/", 1)[-1].startswith(TMP_PREFIX)]

    @contextlib.contextmanager
    def exclusive(self, path: str) -> Iterator[None]:
        """Hold an advisory lock at `path` (local disks): one ingest job per lake at a time.

        The kernel drops the lock when the process dies, so a killed job never blocks its restart.
        Object stores have no such lock; there, run one ingest job per lake (one Ray job).
        """
        if not self.local:
            yield
            return
        import fcntl

        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"{path} is held by another process: one ingest job (and one sequence build) "
                                   f"per lake at a time") from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
