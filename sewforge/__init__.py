"""sewforge: deep spiking residual networks (SEW ResNet) with fused Triton kernels."""
from __future__ import annotations

import os as _os
import sys as _sys

# Spiking activations are large ([T, B, C, H, W]); on the CPU every tensor above glibc's mmap
# threshold (32 MB at most) is fresh memory whose first touch costs a page fault per 4 KB, which
# took longer than the convolution itself. PyTorch's allocator asks for transparent huge pages
# when THP_MEM_ALLOC_ENABLE is set before its first allocation, i.e. before torch is imported:
# set it when sewforge is imported first (the command line and benchmarks always are). Opt out
# with SEWFORGE_THP=0 or by setting THP_MEM_ALLOC_ENABLE=0 yourself.
if "torch" not in _sys.modules and _os.environ.get("SEWFORGE_THP", "1") != "0":
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .registry import BLOCKS, DATASETS, ELEMENTWISE, MODELS, NEURONS, SURROGATES, Registry, plugin_errors
from .surrogates import Surrogate, create_surrogate
from .elementwise import ElementwiseFunction, create_elementwise, sew_function
from .neurons import BaseNeuron, ChargeEquation, create_neuron
from .kernels import multistep_neuron
from .kernels.layout import tune_cpu_allocator
from .spec import SpecError, build
from .models import create_model
from . import interop  # noqa: F401  (installs the reader behind create_model(pretrained=...))
from . import data  # registers the data sets

from ._version import __version__

__all__ = [
    "BLOCKS", "DATASETS", "ELEMENTWISE", "MODELS", "NEURONS", "SURROGATES", "Registry", "plugin_errors",
    "Surrogate", "create_surrogate", "ElementwiseFunction", "create_elementwise", "sew_function",
    "BaseNeuron", "ChargeEquation", "create_neuron", "multistep_neuron", "tune_cpu_allocator", "SpecError", "build", "create_model",
    "list_neurons", "list_surrogates", "list_elementwise", "list_blocks", "list_models",
]


def list_neurons(pattern: str = "*"):
    """Registered neuron names matching a wildcard, naturally sorted."""
    return NEURONS.names(pattern)


def list_surrogates(pattern: str = "*"):
    return SURROGATES.names(pattern)


def list_elementwise(pattern: str = "*"):
    return ELEMENTWISE.names(pattern)


def list_blocks(pattern: str = "*"):
    return BLOCKS.names(pattern)


def list_models(pattern: str = "*"):
    return MODELS.names(pattern)
