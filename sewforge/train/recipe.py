"""Training recipes: a typed, validated configuration read from YAML plus ``key=value`` overrides.

A recipe is a tree of dataclasses (:class:`Recipe` with sections ``model``, ``data``,
``optimizer`` and ``scheduler``).  Loading checks every key and every value before any work starts
and reports *all* problems at once, each with the file and line (or the command-line override) it
came from and what would be allowed.  Unknown keys get close-match suggestions.  PyYAML reads
``1e-3`` as a string (YAML 1.1 wants a dot); a float field accepts it.

A recipe may start from another one with ``base: other.yaml`` (a path relative to the file); its
keys are merged over the base's, section by section.
"""
from __future__ import annotations

import dataclasses
import math
import re
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ..checks import close_matches
from ..memory import MEMORY_MODES

__all__ = ["Recipe", "ModelConfig", "DataConfig", "OptimizerConfig", "SchedulerConfig", "RecipeError",
           "load_recipe", "recipe_from_dict", "recipe_to_dict", "dump_recipe", "parse_override",
           "SCHEDULERS"]

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
        "on recent GPUs)"))
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



_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


# ---------------------------------------------------------------------------------------------
# reading YAML with line numbers
# ---------------------------------------------------------------------------------------------
class _Origins:
    """Where each dotted key came from: ``file:line`` or ``override 'k=v'``."""

    def __init__(self) -> None:
        self.where: Dict[str, str] = {}

    def of(self, key: str, default: str) -> str:
        while key:
            if key in self.where:
                return self.where[key]
            key = key.rpartition(".")[0]
        return default


def _read_yaml(path: Path, origins: _Origins, problems: List[str], prefix: str = "") -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([f"{path}: recipe file not found"]) from None
    except OSError as exc:
        raise RecipeError([f"{path}: cannot read the recipe: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError([f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                           "a recipe is a YAML text file"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError([f"{path}: not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: a recipe must be a mapping of keys to values, got {type(data).__name__}"])

    def walk(n: Any, pre: str) -> None:
        if not isinstance(n, yaml.MappingNode):
            return
        seen = set()
        for key_node, value_node in n.value:
            key = f"{pre}{key_node.value}"
            where = f"{path}:{key_node.start_mark.line + 1}"
            if key in seen:
                problems.append(f"{where}: {key}: key given twice in the same mapping (YAML keeps only the last)")
            seen.add(key)
            origins.where[key] = where
            walk(value_node, key + ".")

    walk(node, prefix)
    return data


def _merge(base: Dict[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_file(path: Path, origins: _Origins, problems: List[str], chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    path = Path(path)
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in chain + (resolved,))
        raise RecipeError([f"{path}: 'base' recipes form a cycle: {cycle}"])
    own = _Origins()
    data = _read_yaml(path, own, problems)
    base_ref = data.pop("base", None)
    if base_ref is None:
        origins.where.update(own.where)
        return data
    if not isinstance(base_ref, str):
        raise RecipeError([f"{own.of('base', str(path))}: base: expected a path to another recipe, "
                           f"got {base_ref!r}"])
    base_path = (path.parent / base_ref)
    if not base_path.exists():
        raise RecipeError([f"{own.of('base', str(path))}: base: recipe {str(base_path)!r} not found "
                           f"(paths are relative to {str(path.parent)!r})"])
    merged = _merge(_load_file(base_path, origins, problems, chain + (resolved,)), data)
    origins.where.update({k: v for k, v in own.where.items() if k != "base"})
    return merged


# ---------------------------------------------------------------------------------------------
# overrides
# ---------------------------------------------------------------------------------------------
def parse_override(text: str) -> Tuple[str, Any]:
    """``'optimizer.lr=1e-3'`` -> ``('optimizer.lr', '1e-3')``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise RecipeError([f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. optimizer.lr=0.01"])
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError([f"override {text!r}: the value is not valid YAML: {exc}"]) from None
    return key, parsed


def _apply_override(data: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{_describe(inner[0])} or null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number (e.g. 0.1 or 1e-3)"
    if tp is str:
        return "a string"
    if origin in (dict, Dict):
        return "a mapping of names to values"
    if origin in (list, List):
        return "a list of integers" if args[0] is int else "a list"
    return "any value"


class _Bad(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union and type(None) in args:
        if value is None:
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0])
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value.strip())  # PyYAML reads 1e-3 (no dot) as a string
        raise _Bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    if origin in (dict, Dict):
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise _Bad
    if origin in (list, List):
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0]) for v in value]
        raise _Bad
    raise TypeError(f"unsupported recipe field type {tp!r}")  # pragma: no cover - schema bug


def _check_range(value: Any, meta: Mapping[str, Any]) -> Optional[str]:
    if value is None:
        return None
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        for key, ok, text in (("min", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                              ("lt", lambda a, b: a < b, "<")):
            if key in meta and not ok(v, meta[key]):
                return f"must be {text} {meta[key]}, got {v!r}"
    if "choices" in meta and value not in meta["choices"]:
        close = close_matches(value, meta["choices"], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{value!r} is not one of {', '.join(meta['choices'])}{hint}"
    return None


def _suggest(key: str, allowed: Sequence[str]) -> str:
    close = close_matches(key, allowed, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _build(cls: Any, data: Mapping[str, Any], prefix: str, origins: _Origins, where: str,
           problems: List[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: Dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        loc = origins.of(dotted, where)
        if key not in fields:
            section = f"section '{prefix[:-1]}'" if prefix else "the top level"
            problems.append(f"{loc}: {dotted}: unknown key; {_suggest(str(key), list(fields))}"
                            f"allowed keys in {section}: {', '.join(fields)}")
            continue
        f = fields[key]
        tp = hints[key]
        if dataclasses.is_dataclass(f.default_factory):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                problems.append(f"{loc}: {dotted}: expected a section (a mapping with keys "
                                f"{', '.join(fl.name for fl in dataclasses.fields(tp))}), got {value!r}")
                continue
            values[key] = _build(tp, value, dotted + ".", origins, where, problems)
            continue
        try:
            coerced = _coerce(value, tp)
        except _Bad:
            problems.append(f"{loc}: {dotted}: expected {_describe(tp)}, got {value!r} "
                            f"({type(value).__name__}); {f.metadata.get('help', '')}".rstrip("; "))
            continue
        bad = _check_range(coerced, f.metadata)
        if bad:
            problems.append(f"{loc}: {dotted}: {bad}")
            continue
        values[key] = coerced
    return cls(**values)


def _check_relations(recipe: Recipe, origins: _Origins, where: str, problems: List[str]) -> None:
    def at(key: str) -> str:
        return origins.of(key, where)

    if not recipe.model.name:
        problems.append(f"{at('model')}: model.name: required: a zoo model name (see `sewforge list models`) "
                        "or a spec string")
    if recipe.T_train is not None and recipe.T_train > recipe.data.T:
        problems.append(f"{at('T_train')}: T_train: must be <= data.T = {recipe.data.T} "
                        f"(frames kept out of T), got {recipe.T_train}")
    if not _DEVICE.fullmatch(recipe.device):
        problems.append(f"{at('device')}: device: expected auto, cpu, cuda or cuda:N, got {recipe.device!r}")
    ms = recipe.scheduler.milestones
    if any(m < 1 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
        problems.append(f"{at('scheduler.milestones')}: scheduler.milestones: expected increasing epochs >= 1, "
                        f"got {ms}")
    if recipe.scheduler.name == "multistep" and not ms:
        problems.append(f"{at('scheduler.name')}: scheduler.milestones: required by the 'multistep' schedule")
    _check_names(recipe, at, problems)


def _registry_problem(registry: Any, name: Optional[str], key: str, at: Any) -> Optional[str]:
    if name is None:
        return None
    try:
        registry.entry(name)
    except KeyError as exc:
        return f"{at(key)}: {key}: {exc.args[0]}"
    return None


def _check_names(recipe: Recipe, at: Any, problems: List[str]) -> None:
    """Names looked up in registries (ours and timm's) are checked now, not at epoch 1."""
    from .. import registry

    try:  # importing the data package registers the built-in datasets
        import sewforge.data  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "sewforge.data":
            raise
    checks = [(registry.ELEMENTWISE, recipe.model.g, "model.g"), (registry.NEURONS, recipe.model.neuron, "model.neuron"),
              (registry.SURROGATES, recipe.model.surrogate, "model.surrogate"),
              (registry.DATASETS, recipe.data.name, "data.name")]
    for reg, name, key in checks:
        bad = _registry_problem(reg, name, key, at)
        if bad:
            problems.append(bad)
    if recipe.model.name:
        bad = _model_problem(recipe.model.name)
        if bad:
            problems.append(f"{at('model.name')}: model.name: {bad}")
    from timm.optim import list_optimizers

    known = list_optimizers()
    opt = recipe.optimizer.name.lower()
    if opt.split("_")[-1] not in known:
        close = close_matches(opt, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        problems.append(f"{at('optimizer.name')}: optimizer.name: unknown optimizer {recipe.optimizer.name!r}; "
                        f"{hint}timm knows: {', '.join(known)}")


def _model_problem(name: str) -> Optional[str]:
    """A zoo name must be registered; anything else must parse as a spec string."""
    try:
        import sewforge.models  # noqa: F401  (registers the zoo)
        from ..registry import MODELS
        from ..spec import SpecError, parse
    except ModuleNotFoundError:  # an installation without the model zoo
        return None
    if name.strip() in MODELS:
        return None
    try:
        parse(name)
    except SpecError as exc:
        return "\n      ".join(str(exc).splitlines())
    return None


_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
#: what a field of the output template may be formatted with: fill/align, sign, a width and a
#: precision of at most three digits, and a type (e.g. ``{optimizer.lr:.0e}``, ``{seed:03d}``)
_SPEC_RE = re.compile(r"(.?[<>^=])?[+\- ]?0?\d{0,3}(\.\d{1,3})?[bcdeEfFgGnosxX%]?")


def _template_value(name: str, fields_: Dict[str, Any]) -> Any:
    """The value of ``{name}`` in the output template: a recipe field or ``section.field`` holding a
    plain value; no other attribute, no indexing."""
    if not _FIELD_RE.fullmatch(name):
        raise ValueError(f"{{{name}}} is not a field name (write {{seed}} or {{section.key}}, without [] or calls)")
    head, _, key = name.partition(".")
    if head not in fields_:
        raise ValueError(f"{{{name}}}: the recipe has no key {head!r}")
    value = fields_[head]
    if key:
        names = {f.name for f in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else set()
        if key not in names:
            raise ValueError(f"{{{name}}}: {head!r} has no key {key!r}")
        value = getattr(value, key)
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{{{name}}} is a {type(value).__name__}, not a single value")
    return value


def _fill_template(template: str, fields_: Dict[str, Any]) -> str:
    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        if conversion is not None:
            raise ValueError(f"{{{name}!{conversion}}}: conversions (!r, !s, !a) are not supported")
        if not _SPEC_RE.fullmatch(spec or ""):
            raise ValueError(f"{{{name}:{spec}}}: format {spec!r} is not a simple format such as '03d' or '.0e' "
                             "(width and precision are at most 3 digits)")
        parts.append(format(_template_value(name, fields_), spec or ""))
    return "".join(parts)


def _format_output(recipe: Recipe, stem: str, at: str, problems: List[str]) -> None:
    fields_: Dict[str, Any] = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}
    fields_["recipe"] = stem
    try:
        recipe.output = _fill_template(recipe.output, fields_)
    except (ValueError, TypeError) as exc:
        problems.append(f"{at}: output: cannot fill in {recipe.output!r}: {exc}; "
                        "use {recipe} or recipe fields such as {data.T}, {seed}, {model.g}")
        return


def recipe_from_dict(data: Mapping[str, Any], *, source: str = "<recipe>", overrides: Sequence[str] = (),
                     stem: Optional[str] = None, _origins: Optional[_Origins] = None,
                     _problems: Optional[List[str]] = None) -> Recipe:
    """A validated :class:`Recipe` from plain data (e.g. the copy kept in a checkpoint)."""
    origins = _origins or _Origins()
    problems = list(_problems or [])
    data = _copy(data)
    data.pop("base", None)
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(data, key, value)
        origins.where[key] = f"override {text!r}"
        # every key below an overridden section comes from the override too
        if isinstance(value, dict):
            for sub in _flatten(value, key + "."):
                origins.where[sub] = f"override {text!r}"
    recipe = _build(Recipe, data, "", origins, source, problems)
    _check_relations(recipe, origins, source, problems)
    if not problems:
        _format_output(recipe, stem or Path(source).stem, origins.of("output", source), problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def _flatten(d: Mapping[str, Any], prefix: str) -> List[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + str(k))
        if isinstance(v, Mapping):
            keys += _flatten(v, f"{prefix}{k}.")
    return keys


def _copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_copy(v) for v in data]
    return data


def load_recipe(path: Union[str, Path], overrides: Sequence[str] = ()) -> Recipe:
    """Read, merge (``base:``), override and validate a recipe file; raise :class:`RecipeError`."""
    path = Path(path)
    origins = _Origins()
    problems: List[str] = []
    try:
        data = _load_file(path, origins, problems)
        return recipe_from_dict(data, source=str(path), overrides=overrides, stem=path.stem,
                                _origins=origins, _problems=problems)
    except RecursionError:  # "a: &x [*x]": a YAML alias inside its own anchor
        raise RecipeError([f"{path}: a YAML anchor (&name) is used inside itself (*name), which makes an endless "
                           "value; repeat the value instead"]) from None


def recipe_to_dict(recipe: Recipe) -> Dict[str, Any]:
    """Plain data (str, numbers, bools, lists, dicts) that :func:`recipe_from_dict` reads back."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    header = ("# Resolved recipe of this run (every default filled in).\n"
              "# Rerun or continue it with: python -m sewforge.train args.yaml [--resume]\n")
    return header + yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=False)
