"""Atomic file writes: a file appears complete or not at all.

Everything sewforge writes (checkpoints, frame caches, run logs, CSVs, figures) goes through
:func:`atomic_file`: the data is written to a hidden temporary file beside the target
(``.<name>.<pid>.<random>.tmp``), synced, and renamed over it; on any error the temporary file is
removed and the old file, if any, is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator, Union

__all__ = ["TMP_SUFFIX", "atomic_file", "atomic_write_bytes", "atomic_write_text", "write_problem"]

#: suffix of the temporary files (stale ones, left by a killed process, can be recognised by it)
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_file(path: Union[str, os.PathLike]) -> Iterator[BinaryIO]:
    """Open a temporary file for binary writing that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_problem(exc: OSError, path: Union[str, os.PathLike], key: str, folder: Union[str, os.PathLike]) -> str:
    """One line for an OS error met while writing ``path``, which lives under ``folder``, the value
    of the recipe key ``key``: what failed, the operating system's reason and what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        todo = f"free space on that disk, or choose a folder on another disk with {key}=..."
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS) or isinstance(exc, PermissionError):
        todo = f"make {str(folder)!r} writable, or choose a writable folder with {key}=..."
    elif code in (errno.ENOTDIR, errno.EEXIST):
        todo = (f"a file stands where a folder should be on the way to {str(path)!r}: rename or remove it, or "
                f"choose another folder with {key}=...")
    elif code == errno.EISDIR:
        todo = f"a folder stands where that file should be: rename or remove it, or choose another folder with {key}=..."
    else:
        todo = f"check that folder, or choose another one with {key}=..."
    return f"{key}={str(folder)!r}: cannot write {str(path)!r} ({reason}); {todo}"
