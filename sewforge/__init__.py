"""sewforge: deep spiking residual networks (SEW ResNet) with fused Triton kernels."""
from __future__ import annotations

from .registry import BLOCKS, DATASETS, ELEMENTWISE, MODELS, NEURONS, SURROGATES, Registry, plugin_errors
from .surrogates import Surrogate, create_surrogate
from .elementwise import ElementwiseFunction, create_elementwise, sew_function
from .neurons import BaseNeuron, ChargeEquation, create_neuron
from .kernels import multistep_neuron
from .spec import SpecError, build
from .models import create_model
from . import data  # registers the data sets

__version__ = "0.1.0"

__all__ = [
    "BLOCKS", "DATASETS", "ELEMENTWISE", "MODELS", "NEURONS", "SURROGATES", "Registry", "plugin_errors",
    "Surrogate", "create_surrogate", "ElementwiseFunction", "create_elementwise", "sew_function",
    "BaseNeuron", "ChargeEquation", "create_neuron", "multistep_neuron", "SpecError", "build", "create_model",
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
