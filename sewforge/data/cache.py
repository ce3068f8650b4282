"""Frames on disk: atomic writes, resumable and parallel conversion of recordings to frames.

A frames folder ``frames_number_{T}_split_by_{method}`` (SpikingJelly's name and layout, one
``.npz`` per sample with the key ``frames``) is the cache: a sample whose file exists is never made
again, whether sewforge or SpikingJelly wrote it.  Every file is written to a hidden temporary file
in the same folder and renamed into place, so an interrupted run leaves complete files only and
the next run converts just what is missing.  Recordings are converted in a process pool, one
recording per task; a recording that cannot be read is reported by name after the others are done.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..fileio import TMP_SUFFIX, atomic_file, write_problem
from .aedat import read_aedat3, read_cifar10dvs_aedat
from .base import DatasetFormatError, DatasetNotFoundError
from .events import events_to_frames

__all__ = ["frames_dirname", "save_frames", "load_frames", "FrameJob", "convert_recordings",
           "remove_stale_temp_files", "READERS", "default_workers"]

READERS: Dict[str, Callable[[str], Dict[str, np.ndarray]]] = {
    "aedat3": read_aedat3,
    "cifar10dvs": read_cifar10dvs_aedat,
}
STALE_TEMP_SECONDS = 3600.0


def frames_dirname(T: int, split_by: str) -> str:
    """Folder name of frames made with ``T`` slices and a split method (SpikingJelly's naming)."""
    return f"frames_number_{T}_split_by_{split_by}"


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _count_dtype(frames: np.ndarray) -> np.dtype:
    top = int(frames.max()) if frames.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def save_frames(path: os.PathLike, frames: np.ndarray) -> None:
    """Write ``frames`` (integer counts) to ``path`` (.npz, key ``frames``) atomically.

    The counts are stored in the smallest unsigned type that holds them, compressed.  The file
    appears complete or not at all: written to a hidden temporary file beside it, synced, renamed.
    """
    with atomic_file(path) as f:
        np.savez_compressed(f, frames=frames.astype(_count_dtype(frames), copy=False))


def load_frames(path: os.PathLike) -> np.ndarray:
    """The ``frames`` array of a frames file (written by sewforge or SpikingJelly)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "frames" not in npz.files:
                raise DatasetFormatError(f"{os.fspath(path)}: no array 'frames' in this .npz "
                                         f"(found {', '.join(npz.files) or 'nothing'})")
            return npz["frames"]
    except FileNotFoundError:
        raise DatasetNotFoundError(f"frames file {os.fspath(path)} does not exist (was it deleted after the "
                                   f"dataset was opened?)") from None
    except DatasetFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DatasetFormatError(f"{os.fspath(path)}: cannot read frames ({type(exc).__name__}: {exc}); the "
                                 f"file is damaged: delete it and it will be made again from the "
                                 f"recordings") from None


def _frames_folder(path: str) -> str:
    """The ``frames_number_*`` folder that holds the frames file ``path`` (its class folders below)."""
    p = Path(path)
    for parent in p.parents:
        if parent.name.startswith("frames_number_"):
            return str(parent)
    return str(p.parent)


def remove_stale_temp_files(folder: Path, max_age_s: float = STALE_TEMP_SECONDS) -> int:
    """Delete temporary files left by a killed conversion (older than ``max_age_s``)."""
    removed = 0
    if not folder.is_dir():
        return 0
    now = time.time()
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                p = os.path.join(dirpath, name)
                try:
                    if now - os.stat(p).st_mtime > max_age_s:
                        os.unlink(p)
                        removed += 1
                except FileNotFoundError:
                    pass
    return removed


@dataclass(frozen=True)
class FrameJob:
    """Convert one recording into the frames of the samples it holds.

    ``outputs`` lists ``(frames_path, t_start, t_end)``: a sample is the events with
    ``t_start <= t < t_end`` (both None: the whole recording).
    """

    source: str
    reader: str
    outputs: Tuple[Tuple[str, Optional[int], Optional[int]], ...]
    T: int
    H: int
    W: int
    split_by: str = "number"


def run_job(job: FrameJob) -> int:
    """Do one job; returns the number of frames files written."""
    try:
        events = READERS[job.reader](job.source)
    except (DatasetFormatError, DatasetNotFoundError):
        raise
    except (OSError, ValueError, MemoryError) as exc:
        raise DatasetFormatError(f"{job.source}: cannot read events ({type(exc).__name__}: {exc})") from None
    for out, t_start, t_end in job.outputs:
        sample = events
        if t_start is not None:
            keep = (events["t"] >= t_start) & (events["t"] < t_end)
            sample = {k: v[keep] for k, v in events.items()}
        try:
            frames = events_to_frames(sample, job.T, job.H, job.W, job.split_by, dtype=np.int64)
        except ValueError as exc:
            raise DatasetFormatError(f"{job.source}: {exc}") from None
        save_frames(out, frames)
    return len(job.outputs)


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def convert_recordings(jobs: Sequence[FrameJob], *, workers: Optional[int] = None, label: str = "",
                       verbose: bool = True) -> int:
    """Run ``jobs`` (``workers`` processes; 1 = in this process).  Returns frames files written.

    Every job runs even if some fail; then a failure raises :class:`DatasetFormatError` (or the
    first other error) naming each recording that failed.  Files written so far are kept.
    """
    jobs = list(jobs)
    if not jobs:
        return 0
    workers = default_workers() if workers is None else workers
    workers = max(1, min(int(workers), len(jobs)))
    total = len(jobs)
    if verbose:
        print(f"{label}: converting {total} recording{'s' * (total != 1)} to frames "
              f"(T={jobs[0].T}, split by {jobs[0].split_by}) with {workers} worker{'s' * (workers != 1)}",
              file=sys.stderr, flush=True)
    failures: List[Tuple[str, BaseException]] = []
    written = 0
    started = time.time()
    step = max(1, total // 20)

    def progress(done: int) -> None:
        if verbose and (done % step == 0 or done == total):
            print(f"{label}: {done}/{total} recordings, {time.time() - started:.0f} s",
                  file=sys.stderr, flush=True)

    if workers == 1:
        for i, job in enumerate(jobs, 1):
            try:
                written += run_job(job)
            except (DatasetFormatError, DatasetNotFoundError, OSError) as exc:
                failures.append((job.source, exc))
            progress(i)
    else:
        # Ctrl-C reaches the workers too: they ignore it and finish the recording in hand (each
        # frames file is written atomically), this process cancels the rest and says what is kept
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_ctrl_c)
        try:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for i, future in enumerate(as_completed(futures), 1):
                try:
                    written += future.result()
                except Exception as exc:  # reported below with the recording's name
                    failures.append((futures[future].source, exc))
                progress(i)
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            print(f"{label}: interrupted; the {written} frames files written are kept and the next run converts "
                  "only what is missing", file=sys.stderr, flush=True)
            raise
        finally:
            pool.shutdown(wait=True)
    if failures:
        failures.sort(key=lambda f: f[0])
        lines = "\n".join(f"  {src}: {exc}" for src, exc in failures[:10])
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        # run_job turns every reading problem into DatasetFormatError / DatasetNotFoundError, so any
        # other OSError happened while writing the frames files: the folder is at fault, not the recording
        write_errors = [exc for _, exc in failures
                        if isinstance(exc, OSError) and not isinstance(exc, DatasetNotFoundError)]
        if write_errors:
            source, first = next((src, exc) for src, exc in failures if exc is write_errors[0])
            outputs = next(job.outputs for job in jobs if job.source == source)
            target = outputs[0][0] if outputs else source
            line = write_problem(first, target, "data.kwargs.cache_dir", _frames_folder(target))
            # one line: the folder is at fault, not the recordings, and every failure says the same
            raise OSError(f"{label}: {line}; the {written} frames files written are kept, the next run "
                          "converts only what is missing") from first
        else:
            advice = "replace the files below and run again to convert only what is missing"
        msg = (f"{label}: {len(failures)} of {total} recordings could not be converted to frames "
               f"({written} frames files were written and are kept; {advice}):\n{lines}{more}")
        if all(isinstance(exc, DatasetFormatError) for _, exc in failures):
            raise DatasetFormatError(msg)
        if all(isinstance(exc, OSError) for _, exc in failures):
            raise OSError(msg) from failures[0][1]
        raise RuntimeError(msg) from failures[0][1]
    return written
