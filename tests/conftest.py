"""Test set-up: run the real Triton kernels in Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before any kernel is defined, so before sewforge is imported.
On a machine with a GPU, run ``SEWFORGE_TEST_DEVICE=cuda pytest`` to compile them for the GPU
instead (the interpreter is then left off).
"""
import os

if os.environ.get("SEWFORGE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("SEWFORGE_PLUGIN_AUTOLOAD", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "sewforge", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow],
    derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sewforge"))

# The test tensors are tiny: one thread avoids OpenMP's hand-offs, which dominate their run time
# (and grow tenfold when the cores are busy).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where kernel tests run: the CPU (interpreted Triton) unless SEWFORGE_TEST_DEVICE says otherwise."""
    return torch.device(os.environ.get("SEWFORGE_TEST_DEVICE", "cpu"))
