"""Files under one storage root: a local folder or any pyarrow / fsspec filesystem URI.

The one place that writes, locks and syncs what lives under `storage.root` (and the local caches):

* **atomic write** (`write`, `write_bytes`, `write_parquet`): every file appears whole or not at
  all. On a local disk it is written to a hidden temporary name in the same folder, flushed, then
  renamed over its final name (rename is atomic and replaces an older copy, which is what makes
  re-running a crashed batch overwrite instead of duplicate). On object stores (s3://, gs://, ...)
  a single PUT is already atomic, so files are written in place. Hidden names start with "." so
  that pyarrow and Ray Data never read a half-written file.
* **sync** (`sync`): the data files of a batch are flushed together by one syncfs before the
  ledger that vouches for them is written (an fsync per file cost ~8 ms each, and a historical
  replay writes one file per partition and day).
* **lock** (`lock`): an exclusive advisory lock held by one process (one machine only).
* **create if absent** (`create`): write a file only if no file has that name, atomically: of two
  writers creating one name, exactly one succeeds, on every store the lake supports (a local or
  shared POSIX volume, including NFS; fsspec stores that do exclusive writes: memory://, s3:// with
  s3fs, gs:// with gcsfs). The lake's writer fence is built on it (precise.store.lease,
  `lake.save_ledger`). Any other store is refused with `NoExclusiveCreate`.
* **publish a folder** (`publish_dir`) and **move a pointer forward** (`advance_pointer`, under
  `pointer_lock`): how the model registry and the embedding snapshots publish a version (local and
  mounted filesystems).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"
# fsspec protocols whose exclusive write ("xb", pipe_file mode="create") is atomic: a conditional
# PUT (If-None-Match: * on S3, ifGenerationMatch=0 on GCS) or an in-process dict. fsspec's base
# class accepts "xb" everywhere but only these backends enforce it, so others are refused.
EXCLUSIVE_PROTOCOLS = frozenset({"memory", "s3", "s3a", "gs", "gcs"})
# errno of filesystems without hard links (some FUSE and SMB mounts): create falls back to O_EXCL
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


class NoExclusiveCreate(ValueError):
    """The store cannot create a file only if it is absent, which the lake's writer fence needs."""


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in root or root.startswith("file://"):
        return pafs.LocalFileSystem(), str(Path(root.removeprefix("file://")).expanduser().resolve())
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


class Files:
    """Paths under one root and the whole-file operations every stage uses."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root = os.fspath(root)
        self.uri = root
        self.fs, self.root = _filesystem(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self._exclusive: tuple[object, str] | None = None  # (fsspec filesystem, its root path)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def relative(self, path: str) -> str:
        """`path` relative to the root (how messages outside the store name a file)."""
        return path.removeprefix(self.root).lstrip("/")

    def local_path(self, *parts: str) -> Path:
        """A path under a local root, for libraries that write local files (safetensors, FAISS)."""
        if not self.local:
            local_root(self.uri)  # raises, naming the root
        return Path(self.path(*parts))

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

    def write_bytes(self, path: str, data: bytes, durable: bool = True) -> None:
        self.write(path, lambda out: out.write(data), durable)

    def write_parquet(self, path: str, table: pa.Table, durable: bool = True) -> None:
        """Write `table` atomically; `durable=False` defers the flush to disk to a later `sync()`."""
        self.write(path, lambda out: pq.write_table(table, out, compression="zstd"), durable)

    def write(self, path: str, writer: Callable[[IO[bytes]], object], durable: bool = True) -> None:
        """The atomic write: `writer` fills a binary file that replaces `path` whole.

        `durable`: flush the file and its folder to disk before returning (a crash right after keeps
        it); otherwise a later `sync()` does it for many files at once."""
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

    def create(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data` only if no file has that name: True when this call created
        it, False when it existed already (another writer got there first). Whole or nothing:
        readers never see part of `data`.

        Local and shared POSIX volumes: the data goes to a hidden temporary file, then `link()`
        gives it its name, atomically and failing if the name exists (also on NFS, where it is the
        classic lock-file primitive); where a mount has no hard links, `O_CREAT | O_EXCL`. fsspec
        stores: an exclusive write (EXCLUSIVE_PROTOCOLS); any other store raises NoExclusiveCreate.
        """
        if self.local:
            return _create_local(path, data)
        fs, root = self._exclusive_fs()
        target = "/".join([root.rstrip("/"), self.relative(path)]) if root.strip("/") else self.relative(path)
        folder = target.rsplit("/", 1)[0]
        with contextlib.suppress(FileExistsError, NotImplementedError):
            fs.makedirs(folder, exist_ok=True)
        try:
            fs.pipe_file(target, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # S3/GCS answer a failed precondition with 412
            if "412" in str(exc) or "PreconditionFailed" in str(exc) or "Precondition" in type(exc).__name__:
                return False
            raise
        return True

    def _exclusive_fs(self) -> tuple[object, str]:
        """The fsspec filesystem of this root that does exclusive writes, or NoExclusiveCreate."""
        if self._exclusive is not None:
            return self._exclusive
        refuse = (f"storage root {self.uri!r}: this store cannot create a file only if it is absent, which "
                  f"the lake's writer fence needs (a conditional write); use a local or shared POSIX "
                  f"volume (NFS, EFS, a KubeRay volume), or an object store through fsspec with exclusive "
                  f"writes ({', '.join(sorted(EXCLUSIVE_PROTOCOLS))}: s3fs / gcsfs)")
        handler = getattr(self.fs, "handler", None)
        fs_ = getattr(handler, "fs", None)
        root = self.root
        if fs_ is None:  # a pyarrow-native filesystem (s3://, gs://): its fsspec twin
            try:
                import fsspec

                fs_, root = fsspec.core.url_to_fs(self.uri)
            except (ImportError, ValueError) as exc:
                raise NoExclusiveCreate(f"{refuse} ({exc})") from None
        protocols = fs_.protocol if isinstance(fs_.protocol, (tuple, list)) else (fs_.protocol,)
        if not EXCLUSIVE_PROTOCOLS.intersection(protocols):
            raise NoExclusiveCreate(refuse)
        self._exclusive = (fs_, root)
        return self._exclusive

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

    def temp_files(self, folder: str) -> list[str]:
        """Leftovers of writes a crash interrupted (local disks only)."""
        return [p for p in self.list_files(folder) if p.rsplit("/", 1)[-1].startswith(TMP_PREFIX)]

    @contextlib.contextmanager
    def lock(self, path: str, what: str = "this lake") -> Iterator[None]:
        """Hold an exclusive advisory lock at `path` (local disks), or raise at once if another
        process holds it. The kernel drops the lock when the process dies, so a killed job never
        blocks its restart. Object stores have no such lock; there, run one writer per lake."""
        if not self.local:
            yield
            return
        import fcntl

        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"{path} is held by another process: one writer of {what} at a time") from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def publish_dir(self, staging: Path, final: Path) -> bool:
        """Rename a fully written staging folder to `final`; False when `final` exists already
        (a concurrent writer took that name): the rename is the atomic publish of a version."""
        try:
            os.rename(staging, final)
        except OSError:
            if final.exists():
                return False
            raise
        _fsync_dir(str(final.parent))
        return True

    @contextlib.contextmanager
    def pointer_lock(self, pointer: Path) -> Iterator[str]:
        """Hold the lock of `pointer` (a LATEST file); yields the version it names now ("" if none).
        Every move of the pointer happens under it."""
        import fcntl

        with open(pointer.parent / f".{pointer.name.lower()}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield pointer.read_text().strip() if pointer.is_file() else ""

    def advance_pointer(self, pointer: Path, version: str, allowed: Callable[[], bool] | None = None) -> bool:
        """Point `pointer` (a LATEST file) at `version` if it is newer than what it names now (and
        `allowed()`, checked under the lock, says yes).

        Under a lock, and only forwards: a slow writer of an older version must not move LATEST
        back past a newer one published meanwhile. True when it moved."""
        with self.pointer_lock(pointer) as current:
            if version <= current or (allowed is not None and not allowed()):
                return False
            self.write_bytes(str(pointer), version.encode())
            return True


def local_root(root: str | os.PathLike[str] | Files) -> Files:
    """`Files` of a root that must be a local or mounted filesystem (checked before any connection)."""
    if isinstance(root, Files):
        uri = root.uri
    else:
        uri = os.fspath(root)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"storage root {uri!r}: this artifact needs a local or mounted filesystem "
                         f"(NFS, EFS, a KubeRay volume); only local or mounted roots are supported")
    return root if isinstance(root, Files) else Files(uri)


def write_local(path: Path, data: bytes, durable: bool = True) -> None:
    """The atomic write for a single local file outside any root (a cache entry, a state file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Files(path.parent).write_bytes(str(path.resolve()), data, durable)


def _create_local(path: str, data: bytes) -> bool:
    """`Files.create` on a POSIX volume."""
    folder, name = path.rsplit("/", 1)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(folder)
    return True


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
