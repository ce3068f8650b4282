"""Owning and writing a run folder: one training at a time (its lock), no earlier run overwritten
unless asked, and every OS error while writing a file turned into one line that names ``output=``,
the file, the reason, what to do and which earlier files are kept."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from ..fileio import write_problem
from .checkpoint import CheckpointError
from .distributed import DistContext, agree
from .errors import RunFolderError
from .recipe import Recipe, dump_recipe
from .resume import RunState, load_resumable
from .runlog import RunFolderBusy, RunFolderLock, RunLog, finished_epochs

__all__ = ["Claim", "claim", "open_run_folder", "own", "writing", "kept_checkpoints"]


def own(lock: Optional[RunFolderLock], output: Path) -> None:
    """Own the run folder (rank 0 only), or raise :class:`RunFolderError` naming its holder."""
    if lock is None or lock.held:
        return
    try:
        lock.acquire()
    except RunFolderBusy as exc:
        raise RunFolderError(str(exc)) from None
    except OSError as exc:
        raise RunFolderError(write_problem(exc, lock.path, "output", output)) from None


@contextlib.contextmanager
def writing(path: Path, output: Path, kept: str = "") -> Iterator[None]:
    """Turn an OS error while writing ``path`` of the run folder into one line naming ``output=``,
    the file, the reason and what to do (plus ``kept``: which earlier files are left as they were)."""
    try:
        yield
    except OSError as exc:
        raise RunFolderError(write_problem(exc, path, "output", output) + (f"; {kept}" if kept else "")) from None


def kept_checkpoints(history: List[Dict[str, float]], output: Path) -> str:
    return (f"the checkpoints of epoch {history[-1]['epoch']} in {str(output)!r} are kept" if history
            else "no checkpoint was written")


@dataclass
class Claim:
    """What a run does with its output folder: continue ``checkpoint``, or start (over, ``restart``)."""

    checkpoint: Optional[Dict[str, Any]] = None
    path: Optional[Path] = None
    restart: bool = False  # the folder holds a run stopped before its first epoch ended: start it over


def claim(ctx: DistContext, output: Path, resume: Union[None, bool, str, Path], overwrite: bool,
          lock: Optional[RunFolderLock]) -> Claim:
    """Check, before any work, that this run may write ``output``; every process agrees."""
    error: Optional[BaseException] = None
    found = Claim()
    try:
        if output.is_dir():  # a new folder is locked when it is created, after all is checked
            own(lock, output)
        if resume:
            found.checkpoint, found.path = load_resumable(resume, output)
        elif ctx.is_main and not overwrite and not (output / "last.pt").exists() and finished_epochs(output) == 0:
            found.restart = (output / "args.yaml").exists()
        elif ctx.is_main and not overwrite:
            raise RunFolderError(
                f"output folder {str(output)!r} already holds a run (summary.csv / last.pt); continue it with "
                f"--resume, start over with --overwrite, or choose another folder with output=...")
    except (CheckpointError, RunFolderError) as exc:
        error = exc
    agree(ctx, error)
    return found


def open_run_folder(ctx: DistContext, recipe: Recipe, lock: Optional[RunFolderLock], found: Claim, overwrite: bool,
                    state: RunState, say: Callable[[str], None]) -> RunLog:
    """Lock the folder, clear an earlier run where asked, write args.yaml and a summary.csv that holds
    exactly the epochs the checkpoint knows about."""
    output = Path(recipe.output)
    error = None
    try:
        own(lock, output)
    except RunFolderError as exc:
        error = exc
    agree(ctx, error)
    if ctx.is_main and (overwrite or found.restart) and found.checkpoint is None:
        if found.restart:
            say(f"output folder {str(output)!r} holds a run stopped before its first epoch ended: starting it over")
        with writing(output, output):
            RunLog.remove_previous(output)
    with writing(output, output):
        runlog = RunLog(output, enabled=ctx.is_main, start_epoch=state.start_epoch)
    if ctx.is_main:
        with writing(output / "args.yaml", output):
            runlog.write_args(dump_recipe(recipe))
        with writing(output / "summary.csv", output):
            runlog.sync_summary(state.history)
    return runlog
