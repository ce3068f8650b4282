"""The errors a training run stops with (besides :class:`~.checkpoint.CheckpointError` and
:class:`~.recipe.RecipeError`); the command line prints them as one line and exits 2."""
from __future__ import annotations

__all__ = ["NonFiniteError", "NonFiniteLossError", "RunFolderError"]


class NonFiniteError(RuntimeError):
    """A training sample, the loss, a parameter or a batch-norm statistic is NaN or infinite; the run
    stopped before writing it and kept its last good checkpoint."""


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite (with finite inputs)."""


class RunFolderError(RuntimeError):
    """The output folder holds an earlier run that this one would overwrite, is in use by another
    training, or cannot be written."""
