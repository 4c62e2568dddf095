"""Small file helpers shared by every layer: atomic writes, folder swaps, one-writer locks and checksums.

A file written with ``atomic_file`` / ``atomic_write_text`` / ``atomic_write_bytes`` is either the old or the
new version after a crash at any moment (written beside it, flushed, then renamed over it), never empty or
half written. A folder is written the same way: into ``new_temp_folder(folder)``, then ``install_folder`` renames
it into place (an existing folder is moved aside only once the new one is whole). Both follow symlinks: the
file or folder a link points to is replaced and the link stays.

``hold_lock`` is the one lock of the project (training runs, the annotation answers file, the tokenised
cache): an exclusive ``flock`` through the ``filelock`` package. The holder's PID is written into the lock
file, so a second process is told who holds it; the kernel drops the lock when its process dies, so a killed
run never blocks its restart.

Checksums are xxHash3-128 (``xxhash``, a dependency of ``datasets``): they detect damage, not tampering, and
hash about 7 GB/s on one CPU core where SHA-256 manages about 1.1 GB/s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import xxhash

from biglm.errors import BiglmError

HASH_NAME = "xxh3_128"
_CHUNK = 8 << 20


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (text modes in UTF-8); when the block ends without an error it is
    flushed to disk and renamed over ``path`` (the target of a symlink), otherwise removed."""
    target = Path(path).resolve()
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (see ``atomic_file``)."""
    with atomic_file(path) as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (see ``atomic_file``)."""
    with atomic_file(path, "wb") as f:
        f.write(data)


def temp_folder(folder: str | os.PathLike) -> Path:
    """Where ``folder`` (the target of a symlink) is written before ``install_folder`` renames it into place."""
    target = Path(folder).resolve()
    return target.parent / f".tmp-{target.name}"


def new_temp_folder(folder: str | os.PathLike, keep: bool = False) -> Path:
    """``temp_folder(folder)``, created and ready to be written: what a killed earlier write left there is removed
    (with ``keep`` the files already prepared in it stay)."""
    tmp = temp_folder(folder)
    if tmp.exists() and not keep:
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=keep)
    return tmp


def install_folder(folder: str | os.PathLike) -> None:
    """Rename the finished ``temp_folder(folder)`` to ``folder``. An existing folder is replaced only now: renamed
    to ``.old-<name>`` first, removed once the new one is in place (a crash leaves one of them whole)."""
    target = Path(folder).resolve()
    tmp = temp_folder(target)
    if target.exists():
        old = target.parent / f".old-{target.name}"
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)


class HeldLock:
    """An exclusive lock held by this process (see ``hold_lock``); ``release`` or a ``with`` block lets it go."""

    def __init__(self, lock: Any, path: Path) -> None:
        self._lock, self.path = lock, path

    def release(self) -> None:
        self._lock.release(force=True)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def lock_holder(path: str | os.PathLike) -> int | None:
    """The PID written into the lock file ``path`` by its holder (None when unreadable)."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def hold_lock(path: str | os.PathLike, what: str, wait: bool = False) -> HeldLock:
    """Take the exclusive lock ``path`` (created with its folder if needed; the PID goes into it). When another
    process holds it: wait for it with ``wait``, else a ``BiglmError`` naming ``what`` and the holder's PID."""
    from filelock import FileLock, Timeout  # imported here: most commands never lock anything

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=-1 if wait else 0, thread_local=False, on_acquired=_write_pid)
    try:
        lock.acquire()
    except Timeout:
        pid = lock_holder(path)
        holder = f"PID {pid}, " if pid is not None else ""
        raise BiglmError(f"{what}: another process is writing it ({holder}lock {path}); let it finish or stop it "
                         "first") from None
    return HeldLock(lock, path)


def file_digest(path: str | os.PathLike) -> str:
    """The xxHash3-128 hex digest of a file's bytes (read in 8 MiB chunks)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    """The xxHash3-128 hex digest of ``data``."""
    return xxhash.xxh3_128(data).hexdigest()
