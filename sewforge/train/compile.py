"""Training through ``torch.compile`` where it works, eagerly (with one line said) where it does not."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["compile_model", "compiler_problem"]

_COMPILER_PROBLEMS: Dict[str, Optional[str]] = {}


def compiler_problem(device: torch.device) -> Optional[str]:
    """None when ``torch.compile`` works on ``device`` (a tiny function is compiled and run once
    per device type), else what went wrong, in one line."""
    key = torch.device(device).type
    if key not in _COMPILER_PROBLEMS:
        try:
            fn = torch.compile(lambda t: t * 2 + 1, fullgraph=True)
            ok = bool((fn(torch.ones(8, device=device)) == 3).all())
            _COMPILER_PROBLEMS[key] = None if ok else "a compiled test function gave a wrong result"
        except Exception as exc:  # noqa: BLE001 - any backend failure means: run eager
            _COMPILER_PROBLEMS[key] = _one_line(exc)
    return _COMPILER_PROBLEMS[key]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class _CompiledOrEager(nn.Module):
    """Runs ``torch.compile(module)``; if its first call fails (no working backend for this
    model), says so once and runs ``module`` eagerly from then on."""

    def __init__(self, module: nn.Module, say: Callable[[str], None]):
        super().__init__()
        self.module = module
        object.__setattr__(self, "_compiled", torch.compile(module))
        object.__setattr__(self, "_say", say)
        self._works: Optional[bool] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._works is None:
            try:
                out = self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a real error in the model raises again below, eagerly
                self._works = False
                self._say(f"compile: torch.compile failed on the first step ({_one_line(exc)}); training runs eager")
            else:
                self._works = True
                return out
        return (self._compiled if self._works else self.module)(*args, **kwargs)


def compile_model(model: nn.Module, device: torch.device, say: Callable[[str], None]) -> nn.Module:
    """``model`` wrapped for ``torch.compile`` (falling back to eager on the first failure), or
    ``model`` itself, with one line said, where this PyTorch has no working compiler."""
    problem = compiler_problem(device)
    if problem is not None:
        say(f"compile: true, but torch.compile does not work here ({problem}); training runs eager")
        return model
    return _CompiledOrEager(model, say)
