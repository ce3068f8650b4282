"""The recipe schema: a tree of dataclasses (:class:`Recipe` with sections ``model``, ``data``,
``optimizer`` and ``scheduler``) whose field metadata carry the help text and the allowed range or
choices; plain data and YAML out.  Reading and checking a recipe is :mod:`.load`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ...memory import MEMORY_MODES

__all__ = ["Recipe", "ModelConfig", "DataConfig", "OptimizerConfig", "SchedulerConfig", "RecipeError",
           "recipe_to_dict", "dump_recipe", "SCHEDULERS"]

#: Schedulers (timm's factory names) whose learning rate is a function of the epoch.
SCHEDULERS = ("cosine", "step", "multistep", "poly", "tanh", "constant")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message lists every problem with where it came from."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        head = "invalid recipe" if len(self.problems) > 1 else ""
        body = "\n  ".join(self.problems)
        super().__init__(f"{head}:\n  {body}" if head else body)


def _meta(help: str, **extra: Any) -> Dict[str, Any]:
    return {"help": help, **extra}


@dataclass
class ModelConfig:
    """Which network to train: a zoo name (``sew7b_gesture``) or a spec string, plus overrides."""

    name: Optional[str] = field(default=None, metadata=_meta(
        "zoo model name (see `sewforge list models`) or a spec string such as 'c32k3s1-BN-PLIF-FC10'"))
    g: Optional[str] = field(default=None, metadata=_meta("element-wise function of SEW blocks: ADD, AND, IAND"))
    neuron: Optional[str] = field(default=None, metadata=_meta("neuron name: IF, LIF, PLIF, ..."))
    surrogate: Optional[str] = field(default=None, metadata=_meta("surrogate gradient: ATan, Rectangular, ..."))
    zero_init: Optional[bool] = field(default=None, metadata=_meta("start every residual block as an identity"))
    v_threshold: Optional[float] = field(default=None, metadata=_meta("firing threshold of every neuron"))
    memory: str = field(default="compact", metadata=_meta(
        "what backward keeps: compact (spikes in 1 bit), lean (compact, and each batch norm and neuron "
        "rerun in backward instead of keeping the neuron's fp32 potential), recompute (rerun each residual "
        "block in backward, plus compact) or dense", choices=MEMORY_MODES))
    channels_last: bool = field(default=False, metadata=_meta(
        "channels_last layout of weights and of every time step of the activations (faster convolutions "
        "on recent GPUs; on the CPU, convolutions of sparse spikes then run event-driven)"))
    kwargs: Dict[str, Any] = field(default_factory=dict, metadata=_meta(
        "further keyword arguments for sewforge.models.create_model"))


@dataclass
class DataConfig:
    """Where the samples come from (``sewforge.data.create_dataset``) and how they are loaded."""

    name: str = field(default="synthetic", metadata=_meta("dataset name (see `sewforge list datasets`)"))
    root: Optional[str] = field(default=None, metadata=_meta("dataset folder (not needed by 'synthetic')"))
    T: int = field(default=16, metadata=_meta("time steps: frames per event sample, repeats of a static image",
                                              min=1))
    train_split: str = field(default="train", metadata=_meta("split used for training"))
    test_split: str = field(default="test", metadata=_meta("split used for testing"))
    kwargs: Dict[str, Any] = field(default_factory=dict, metadata=_meta(
        "further keyword arguments for create_dataset, given to both splits"))
    workers: int = field(default=0, metadata=_meta("DataLoader worker processes (0 = load in the main process)",
                                                   min=0))


@dataclass
class OptimizerConfig:
    """An optimizer from timm's factory (``timm.optim.create_optimizer_v2``)."""

    name: str = field(default="sgd", metadata=_meta(
        "timm optimizer name; 'sgd' is plain momentum SGD as in the paper unless nesterov is true"))
    lr: float = field(default=0.1, metadata=_meta("base learning rate", gt=0.0))
    momentum: float = field(default=0.9, metadata=_meta("momentum of optimizers that have one", min=0.0, lt=1.0))
    weight_decay: float = field(default=0.0, metadata=_meta("L2 weight decay (the paper uses none)", min=0.0))
    nesterov: bool = field(default=False, metadata=_meta("Nesterov momentum for 'sgd'"))
    kwargs: Dict[str, Any] = field(default_factory=dict, metadata=_meta(
        "further keyword arguments for the optimizer (e.g. betas, eps)"))


@dataclass
class SchedulerConfig:
    """A per-epoch learning-rate schedule from timm's factory; lr is a function of the epoch."""

    name: str = field(default="cosine", metadata=_meta("learning-rate schedule", choices=SCHEDULERS))
    T_max: Optional[int] = field(default=None, metadata=_meta(
        "period in epochs of cosine/poly/tanh (default: epochs)", min=1))
    step_size: int = field(default=30, metadata=_meta("'step': multiply lr by gamma every step_size epochs", min=1))
    milestones: List[int] = field(default_factory=list, metadata=_meta(
        "'multistep': epochs at which lr is multiplied by gamma"))
    gamma: float = field(default=0.1, metadata=_meta("decay factor of 'step'/'multistep', power of 'poly'", gt=0.0))
    min_lr: float = field(default=0.0, metadata=_meta("lowest lr of cosine/poly/tanh", min=0.0))
    warmup_epochs: int = field(default=0, metadata=_meta("epochs of linear warm-up", min=0))
    warmup_lr: float = field(default=0.0, metadata=_meta("lr at the start of warm-up", min=0.0))


@dataclass
class Recipe:
    """Everything one training run needs; saved resolved as ``args.yaml`` in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata=_meta("the network"))
    data: DataConfig = field(default_factory=DataConfig, metadata=_meta("the data"))
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, metadata=_meta("the optimizer"))
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig, metadata=_meta("the lr schedule"))
    epochs: int = field(default=1, metadata=_meta("training epochs", min=1))
    batch_size: int = field(default=16, metadata=_meta("samples per step and per process", min=1))
    test_batch_size: Optional[int] = field(default=None, metadata=_meta(
        "samples per test step (default: batch_size)", min=1))
    T_train: Optional[int] = field(default=None, metadata=_meta(
        "random temporal delete: train on T_train of the T frames (ordered, one draw per batch); "
        "null = all frames", min=1))
    amp: bool = field(default=False, metadata=_meta("mixed precision (float16 + loss scaling on GPUs)"))
    compile: bool = field(default=False, metadata=_meta(
        "train through torch.compile (runs eager, with a warning, where no compiler works)"))
    amp_dtype: str = field(default="auto", metadata=_meta(
        "autocast dtype: auto = float16 on GPUs, bfloat16 on CPUs", choices=("auto", "float16", "bfloat16")))
    clip_grad: Optional[float] = field(default=None, metadata=_meta("clip the gradient norm to this value", gt=0.0))
    seed: int = field(default=2020, metadata=_meta("seed of every random number generator", min=0))
    deterministic: bool = field(default=False, metadata=_meta("ask PyTorch for deterministic kernels (slower)"))
    drop_last: bool = field(default=False, metadata=_meta("drop the last incomplete training batch"))
    sync_bn: bool = field(default=False, metadata=_meta("synchronise batch-norm statistics across GPUs"))
    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda or cuda:N"))
    threads: Optional[int] = field(default=None, metadata=_meta(
        "CPU threads of each process for PyTorch operations (null = PyTorch's default, one per core)", min=1))
    output: str = field(default="runs/{recipe}", metadata=_meta(
        "run folder; may use {recipe} (file name without .yaml) and fields such as {data.T} or {seed}"))


def recipe_to_dict(recipe: Recipe) -> Dict[str, Any]:
    """Plain data (str, numbers, bools, lists, dicts) that :func:`recipe_from_dict` reads back."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    header = ("# Resolved recipe of this run (every default filled in).\n"
              "# Rerun or continue it with: python -m sewforge.train args.yaml [--resume]\n")
    return header + yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=False)
