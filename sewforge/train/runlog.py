"""What a run leaves behind and prints: the run folder, progress bars, TensorBoard, the curves PNG.

Run folder::

    args.yaml     the resolved recipe (rerun it as is)
    summary.csv   one row per finished epoch (rewritten whole, atomically, after each)
    last.pt       checkpoint after the last finished epoch
    best.pt       checkpoint of the epoch with the best test accuracy
    curves.png    loss, accuracy, learning rate and firing rate against the epoch
    tensorboard/  TensorBoard events (when tensorboard is installed)
    train.log     every line the run said, with its time (appended by --resume; see .logs)
    .lock         held (an OS lock) by the training writing the folder: its pid, host and start time
"""
from __future__ import annotations

import csv
import io
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

from ..fileio import atomic_write_bytes, atomic_write_text

__all__ = ["SUMMARY_COLUMNS", "RUN_FILES", "LOCK_NAME", "RunLog", "RunFolderLock", "RunFolderBusy", "Progress",
           "read_summary", "finished_epochs"]

#: The lock file of a run folder: held (``flock``) by the training that writes the folder.
LOCK_NAME = ".lock"

SUMMARY_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_acc5", "best_test_acc", "lr",
                   "seconds", "firing_rate")
#: Files and folders a run writes (and ``--overwrite`` removes).
RUN_FILES = ("args.yaml", "summary.csv", "last.pt", "best.pt", "curves.png", "tensorboard", "train.log")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return str(value)


def read_summary(path: Path) -> List[Dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def _csv_text(rows: Sequence[Dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        writer.writerow([_fmt(row[c]) for c in SUMMARY_COLUMNS])
    return buf.getvalue()


def finished_epochs(folder: Path) -> int:
    """Rows in ``folder/summary.csv`` (0 when it is missing or holds only its header)."""
    try:
        with open(Path(folder) / "summary.csv", newline="", encoding="utf-8") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 0)
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return 0


class RunFolderBusy(RuntimeError):
    """Another process is training into the run folder."""


class RunFolderLock:
    """An OS lock (``fcntl.flock``) on ``<folder>/.lock``: one training writes a run folder at a time.

    The lock belongs to the open file, so the operating system drops it when the holder exits,
    however it exits (a crash, ``kill -9``); the file keeps the holder's pid, host and start time,
    which the next process quotes when the lock is taken.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self._fh: Optional[Any] = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> "RunFolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = " ".join(fh.read(300).split()) or "an unknown process"
            fh.close()
            raise RunFolderBusy(f"output folder {str(self.path.parent)!r} is in use by another training ({holder}); "
                                "wait for it to end, or choose another folder with output=...") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on host {socket.gethostname()}, started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RunLog:
    """Writes the run folder; a no-op on processes other than rank 0."""

    def __init__(self, folder: Path, enabled: bool, start_epoch: int = 0, plot_interval: float = 60.0):
        self.folder = Path(folder)
        self.enabled = enabled
        self.plot_interval = plot_interval  # drawing costs about a second: not after every short epoch
        self._last_plot = -math.inf
        self._plotted = True
        self._tb = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            # purge_step drops events of epochs that a resumed run repeats
            self._tb = SummaryWriter(str(self.folder / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None)

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.csv"

    def write_args(self, text: str) -> None:
        if self.enabled:
            atomic_write_text(self.folder / "args.yaml", text)

    def sync_summary(self, history: Sequence[Dict[str, Any]]) -> None:
        """Make summary.csv hold exactly ``history`` (the rows a checkpoint knows about).

        Normally a no-op; it repairs the file when a crash fell between saving a checkpoint and
        appending its row, or when a run resumes from an older checkpoint than the last row.
        """
        if not self.enabled:
            return
        wanted = _csv_text(history, header=True)
        try:
            current = self.summary_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != wanted:
            atomic_write_text(self.summary_path, wanted)

    def append(self, row: Dict[str, Any], history: Sequence[Dict[str, Any]]) -> None:
        if not self.enabled:
            return
        # the whole table, renamed into place: a full disk never leaves half a row behind
        atomic_write_text(self.summary_path, _csv_text(list(history) or [row], header=True))
        self._plotted = False

    def add_scalars(self, row: Dict[str, Any]) -> None:
        """The epoch's numbers to TensorBoard (when it is installed)."""
        if self.enabled and self._tb is not None:
            step = int(row["epoch"])
            for key in SUMMARY_COLUMNS[1:]:
                if not (isinstance(row[key], float) and math.isnan(row[key])):
                    self._tb.add_scalar(key, row[key], step)
            self._tb.flush()

    def plot_if_due(self, history: Sequence[Dict[str, Any]]) -> None:
        """Draw curves.png when ``plot_interval`` seconds have passed since it was last drawn."""
        if time.perf_counter() - self._last_plot >= self.plot_interval:
            self.plot(history)

    def plot(self, history: Sequence[Dict[str, Any]]) -> None:
        """curves.png, drawn with matplotlib's Agg canvas (no GUI, no global pyplot state)."""
        if not self.enabled or not history or self._plotted:
            return
        self._last_plot = time.perf_counter()
        self._plotted = True
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        epochs = [r["epoch"] for r in history]
        fig = Figure(figsize=(10, 7), dpi=80)
        FigureCanvasAgg(fig)
        panels = (("loss", ("train_loss", "test_loss")), ("accuracy", ("train_acc", "test_acc", "best_test_acc")),
                  ("learning rate", ("lr",)), ("mean firing rate (test)", ("firing_rate",)))
        for i, (title, keys) in enumerate(panels, 1):
            ax = fig.add_subplot(2, 2, i)
            for key in keys:
                ax.plot(epochs, [r[key] for r in history], marker="o" if len(epochs) < 30 else None,
                        markersize=3, label=key)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            if len(keys) > 1:
                ax.legend(fontsize=8)
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.08, top=0.95, wspace=0.25, hspace=0.35)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(self.folder / "curves.png", buf.getvalue())

    def close(self, history: Sequence[Dict[str, Any]] = ()) -> None:
        """Draw the curves if the last epochs are not on them yet; close TensorBoard."""
        try:
            self.plot(history)
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    @staticmethod
    def remove_previous(folder: Path) -> None:
        """``--overwrite``: delete the files of an earlier run in ``folder`` (only those)."""
        for name in RUN_FILES:
            p = Path(folder) / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


class Progress:
    """A progress bar on a terminal; otherwise (logs, CI) a plain line every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream: Optional[TextIO] = None,
                 bar: Optional[bool] = None, interval: float = 30.0):
        self.total = max(1, total)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.bar = _isatty(self.stream) if bar is None else bar
        self.enabled = enabled
        self.interval = interval
        self.start = self._last = time.perf_counter()

    def update(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        rate = step / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else 0.0
        info = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self.bar:
            if step < self.total and now - self._last < 0.1:
                return
            self._last = now
            width = 24
            filled = int(width * step / self.total)
            text = (f"\r{self.desc} |{'#' * filled}{'.' * (width - filled)}| {step}/{self.total} "
                    f"[{elapsed:.0f}s<{eta:.0f}s, {rate:.2f}it/s] {info}")
            columns = shutil.get_terminal_size((120, 20)).columns
            self.stream.write(text[:columns] + "\x1b[K")  # clear what a longer previous line left
            if step >= self.total:
                self.stream.write("\r\x1b[K")  # the caller prints the summary in its place
            self.stream.flush()
        elif step < self.total and now - self._last >= self.interval:
            self._last = now
            self.stream.write(f"{self.desc} {step}/{self.total} [{elapsed:.0f}s<{eta:.0f}s] {info}\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
