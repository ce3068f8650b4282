"""What a run says.  Every line is a record of the logger ``sewforge.train`` (said by process 0
only); while a run lasts, two handlers of that logger write it:

- the console: the ``log`` callable given to :func:`~.loop.train` (``print`` by default) receives
  the bare line, so the console shows exactly what it always showed;
- ``train.log`` in the run folder: the same line after its time, appended (``--resume`` continues
  the file) by one ``write`` per line, so a crash leaves whole lines.

Handlers added by a user to ``logging.getLogger("sewforge.train")`` receive the same records.  A
``train.log`` that cannot be written is said once, and the run goes on: the lines still reach the
console, and the files a run is continued from (checkpoints, summary.csv) are not at stake.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, List, Optional

from ..fileio import write_problem

__all__ = ["LOGGER", "LOG_NAME", "TrainLog"]

#: The logger of every line a run says.
LOGGER = logging.getLogger("sewforge.train")
if LOGGER.level == logging.NOTSET:
    LOGGER.setLevel(logging.INFO)  # the lines are INFO records, which the root logger's WARNING would drop

#: The log file of a run folder.
LOG_NAME = "train.log"

_ONLY_IN_FILE = "sewforge_file_only"


def _print(msg: str) -> None:
    print(msg, flush=True)


class _Console(logging.Handler):
    """The bare line to ``write`` (no level, no time): the console output of a run."""

    def __init__(self, write: Callable[[str], None]):
        super().__init__()
        self.write = write
        self.addFilter(lambda record: not getattr(record, _ONLY_IN_FILE, False))

    def emit(self, record: logging.LogRecord) -> None:
        self.write(record.getMessage())


class _LogFile(logging.Handler):
    """``train.log``: each line after its time, appended by one ``os.write``.  Lines said before the
    run folder is ready wait for :meth:`start`.  The first write that fails leaves ``problem`` (one
    line) and the file alone from then on."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.path: Optional[Path] = None
        self.problem: Optional[str] = None
        self._output: Optional[Path] = None
        self._fd: Optional[int] = None
        self._waiting: List[logging.LogRecord] = []

    def start(self, folder: Path) -> None:
        self.path, self._output = Path(folder) / LOG_NAME, Path(folder)
        waiting, self._waiting = self._waiting, []
        for record in waiting:
            self.emit(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.problem is not None:
            return
        if self.path is None:
            self._waiting.append(record)
            return
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            data = (self.format(record) + "\n").encode("utf-8")
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            self.problem = (write_problem(exc, self.path, "output", self._output)
                            + "; the run goes on, with its lines on the console only")
            self._close_file()

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self._close_file()
        super().close()


class TrainLog:
    """``say(line)`` of one run or evaluation: an INFO record of ``sewforge.train`` on process 0
    (``enabled``), nothing elsewhere.  Use it as a context manager: its handlers (the console,
    ``log``; train.log once :meth:`keep_in` names the run folder) hear this run's records only."""

    def __init__(self, log: Optional[Callable[[str], None]] = None, enabled: bool = True):
        self.enabled = enabled
        self._console = _Console(log or _print)
        self._file = _LogFile()
        self._reported = False
        for handler in (self._console, self._file):
            handler.addFilter(lambda record: getattr(record, "sewforge_run", None) is self)

    def __enter__(self) -> "TrainLog":
        if self.enabled:
            LOGGER.addHandler(self._console)
            LOGGER.addHandler(self._file)
        return self

    def __exit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> None:
        if self.enabled and exc is not None and self._file.path is not None:
            # the caller reports the error; train.log keeps why the run stopped
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            self._say(logging.ERROR, f"stopped: {reason}", only_in_file=True)
        LOGGER.removeHandler(self._console)
        LOGGER.removeHandler(self._file)
        self._file.close()

    def __call__(self, msg: str) -> None:
        self._say(logging.INFO, msg)

    def keep_in(self, folder: Path) -> None:
        """From now on (and for the lines said so far) also append to ``folder/train.log``."""
        if self.enabled:
            self._file.start(folder)
            self._report()

    def _say(self, level: int, msg: str, only_in_file: bool = False) -> None:
        if not self.enabled:
            return
        LOGGER.log(level, msg, extra={"sewforge_run": self, _ONLY_IN_FILE: only_in_file})
        self._report()

    def _report(self) -> None:
        if self._file.problem is not None and not self._reported:
            self._reported = True
            LOGGER.warning(self._file.problem, extra={"sewforge_run": self})
