"""The one error type of the spec compiler: it points at the text that is wrong."""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

from ..checks import ECHO_LIMIT, close_matches

__all__ = ["SpecError", "close_matches", "located", "shorten", "ECHO_LIMIT"]

#: the most characters of one word, and of the spec's line, an error message repeats
_LONG_WORD = re.compile(r"([^\s'\"]{%d})[^\s'\"]{4,}" % ECHO_LIMIT)


def shorten(text: str) -> str:
    """``text`` with every word longer than :data:`ECHO_LIMIT` cut to its start and '...'."""
    return _LONG_WORD.sub(r"\1...", text)


class SpecError(ValueError):
    """A spec string (or a build argument) that cannot be compiled.

    ``pos``/``end`` are 0-based character offsets into ``spec`` (``None`` when the problem is
    not in the text, e.g. a bad ``input_shape``); ``lineno``/``colno`` are 1-based. ``str()``
    gives the message, the offending line with a caret under the token, and suggestions.
    """

    def __init__(self, msg: str, spec: Optional[str] = None, pos: Optional[int] = None,
                 end: Optional[int] = None, suggestions: Sequence[str] = (), hint: Optional[str] = None):
        self.msg = msg
        self.spec = spec
        self.pos = pos
        self.end = end if end is not None else (None if pos is None else pos + 1)
        self.suggestions = list(suggestions)
        self.hint = hint
        if spec is not None and pos is not None:
            pos = max(0, min(pos, len(spec)))
            self.lineno = spec.count("\n", 0, pos) + 1
            self.colno = pos - (spec.rfind("\n", 0, pos) + 1) + 1
        else:
            self.lineno = self.colno = None
        super().__init__(self._render())

    def __reduce__(self):
        return (_rebuild, (self.msg, self.spec, self.pos, self.end, tuple(self.suggestions), self.hint))

    def _render(self) -> str:
        text = shorten(self.msg)
        if self.spec is not None and self.pos is not None:
            text += f" (line {self.lineno} column {self.colno}, char {self.pos})"
        if self.suggestions:
            text += "; did you mean " + ", ".join(repr(s) for s in self.suggestions) + "?"
        if self.hint:
            text += f"\n  hint: {shorten(self.hint)}"
        if self.spec is not None and self.pos is not None:
            line_start = self.spec.rfind("\n", 0, self.pos) + 1
            line_end = self.spec.find("\n", self.pos)
            if line_end == -1:
                line_end = len(self.spec)
            line = self.spec[line_start:line_end]
            start = self.pos - line_start
            stop = max(start + 1, min(self.end if self.end is not None else self.pos + 1, line_end) - line_start)
            if len(line) > 3 * ECHO_LIMIT:  # a window around the mistake, not the whole line
                lo = max(0, start - ECHO_LIMIT)
                hi = min(len(line), start + 2 * ECHO_LIMIT)
                head, tail = ("..." if lo else ""), ("..." if hi < len(line) else "")
                line = head + line[lo:hi] + tail
                start, stop = start - lo + len(head), min(stop, hi) - lo + len(head)
            pad = "".join("\t" if c == "\t" else " " for c in line[:start])  # keep tabs aligned
            text += f"\n    {line}\n    {pad}{'^' * (stop - start)}"
        return text


def _rebuild(msg, spec, pos, end, suggestions, hint) -> SpecError:
    return SpecError(msg, spec, pos, end, suggestions, hint)


def located(spec: Any, node: Any, msg: str, hint: Optional[str] = None, suggestions=()) -> SpecError:
    """An error about ``node`` of ``spec``: with a caret under its token when the spec came from text."""
    span = getattr(node, "span", (0, 0))
    if spec.source and span[1] > span[0]:
        return SpecError(msg, spec.source, span[0], span[1], suggestions, hint)
    return SpecError(msg, suggestions=suggestions, hint=hint)
