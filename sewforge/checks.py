"""The two checks every user-facing error shares: close-match suggestions and positive integers.

One implementation, so that every "did you mean ...?" and every "must be a positive integer"
behaves alike wherever it is raised (registry, spec strings, recipes, data sets, blocks, CLI).
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, List, Type

__all__ = ["close_matches", "positive_int", "ECHO_LIMIT"]

#: words longer than this are never suggested for (nothing registered is that long) and are cut
#: when echoed back in messages
ECHO_LIMIT = 40


def close_matches(word: Any, candidates: Iterable[Any], n: int = 3, cutoff: float = 0.6) -> List[str]:
    """Up to ``n`` candidates that look like ``word``, best first (case-insensitive difflib ratio,
    returned in the candidates' own spelling)."""
    by_lower = {}
    for c in candidates:
        by_lower.setdefault(str(c).lower(), str(c))
    word = str(word)
    if len(word) > 4 * ECHO_LIMIT:
        return []
    return [by_lower[f] for f in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)]


def positive_int(value: Any, what: str, error: Type[Exception] = ValueError) -> int:
    """``value`` when it is an int >= 1 (not a bool), else ``error("<what> must be a positive
    integer, got <value>")``; ``what`` names the argument and, where useful, its owner."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{what} must be a positive integer, got {value!r}")
    return value
