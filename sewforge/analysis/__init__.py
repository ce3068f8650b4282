"""The paper's instruments for any model (``sewforge analyze``).

- :mod:`.rates`: firing rates of A^l (each block's last neuron) and O^l per block (Figures 4, 5, 11);
- :mod:`.grads`: gradient amplitude ||dL/dS^l|| per block, and the predictions of Eq. (11) and
  Appendix A.4 where blocks are exact identities (Figures 6-8);
- :mod:`.degradation`: final training loss against depth through the trainer (Table 2);
- :mod:`.study`: comparisons of several networks (models x g x init) on one batch;
- :mod:`.energy`: synaptic operations and 45 nm energy per layer against the same network as an ANN;
- :mod:`.reports`: each analysis end to end (build, measure, write CSV and PNG, sum up), as
  ``sewforge analyze`` runs it: ``analyze_rates``, ``analyze_grads``, ``analyze_energy``,
  ``analyze_degradation``;
- :mod:`.plots`: the figures; :mod:`.common`: models, inputs and file output shared by all.
"""
from __future__ import annotations

from .common import AnalysisError, Variant, build_model, dataset_batch, parse_shape, random_spikes
from .degradation import DegradationRun, degradation_recipe, degradation_spec, degradation_study
from .grads import BlockGradient, gradient_amplitudes, surrogate_factors
from .rates import BlockRates, firing_rates
from .reports import Report, StudyOptions, analyze_degradation, analyze_energy, analyze_grads, analyze_rates
from .study import Batch, ModelOptions, expand_variants, load_trained, make_batch, measure, run_study

__all__ = ["AnalysisError", "Variant", "build_model", "dataset_batch", "parse_shape", "random_spikes",
           "DegradationRun", "degradation_recipe", "degradation_spec", "degradation_study",
           "BlockGradient", "gradient_amplitudes", "surrogate_factors", "BlockRates", "firing_rates",
           "Batch", "ModelOptions", "expand_variants", "load_trained", "make_batch", "measure", "run_study",
           "StudyOptions", "Report", "analyze_rates", "analyze_grads", "analyze_energy", "analyze_degradation"]
