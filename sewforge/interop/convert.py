"""Pretrained weights from elsewhere: SpikingJelly 2.0 state dicts and the paper's 2021 checkpoints.

Three sources are read, all on the CPU and without unpickling arbitrary objects:

* ``sewforge``: a checkpoint written by ``sewforge train`` or :func:`save_converted`;
* ``spikingjelly``: a state dict of SpikingJelly 2.0's ``sew_resnet*`` / ``spiking_resnet*``
  (torchvision names: ``layer1.0.conv1.weight``, ``layer1.0.sn1.w`` for PLIF, ...), bare or inside
  a dict under ``model`` / ``net`` / ``state_dict``;
* ``sew2021``: the original code of the paper (SpikingJelly of May 2021), whose training script saved
  ``{"model": state_dict, "args": argparse.Namespace, ...}``. Conv and BN sit in a
  ``SeqToANNContainer``: ``layer1.0.conv1.module.0.weight`` is the conv, ``...module.1.*`` its BN,
  ``downsample.0.module.{0,1}`` the shortcut's conv-BN and ``downsample.1`` its neuron. The DVS
  networks are one ``nn.Sequential`` called ``conv`` (``conv.0.0.module.0.weight`` is the stem
  conv, ``conv.1.conv.0.1.w`` the first block's first PLIF) and a linear layer ``out``; these
  are matched to the sewforge network layer by layer, in forward order. The pickled
  ``argparse.Namespace`` is read into a plain stand-in object (no code of the file runs), and
  its ``connect_f`` (the element-wise function) and ``model`` are used when the caller gives none.

SpikingJelly 2.0's ``Bottleneck`` calls ``sew_function(out, identity, cnf)``, so its "IAND" is
``A * (1 - S)``, not the paper's ``(1 - A) * S`` (its ``BasicBlock`` has the paper's order). A
bottleneck network converted from it with ``g="IAND"`` therefore gets ``g="RIAND"``
(:data:`sewforge.elementwise.RIAND`), which computes what the source computed, and a
:class:`ConversionWarning` says so.

A key that maps nowhere, a missing tensor or a shape mismatch: one :class:`ConversionError`
listing them all. Nothing is written unless the conversion succeeded.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = ["ConversionError", "ConversionWarning", "Source", "Converted", "load_source", "convert_state_dict",
           "save_converted", "load_pretrained", "SOURCES"]

#: the formats :func:`load_source` recognises
SOURCES = ("sewforge", "spikingjelly", "sew2021")
_SEWFORGE_FORMAT = "sewforge-train-checkpoint"
_LIST_LIMIT = 12


class ConversionError(ValueError):
    """A file that cannot be converted; the message names the file, what was found and what would work."""


class ConversionWarning(UserWarning):
    """The converted network differs in form from what was asked, so that it computes what the source did."""


class _Args:
    """Stand-in for the ``argparse.Namespace`` pickled into 2021 checkpoints: attributes only."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in vars(self).items() if isinstance(v, (str, int, float, bool, type(None)))}


@dataclass
class Source:
    """What a file held: its format, the model's state dict and what else it said about the run."""

    path: str
    kind: str  # one of SOURCES
    state: Dict[str, torch.Tensor]
    args: Dict[str, Any] = field(default_factory=dict)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    model_name: Optional[str] = None


@dataclass
class Converted:
    """A converted network, its sewforge state dict, and what the converter had to say about it."""

    model: nn.Module
    model_name: str
    model_kwargs: Dict[str, Any]
    source: Source
    notes: List[str] = field(default_factory=list)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.model.state_dict()


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _read(path: Path) -> Any:
    if not path.is_file():
        raise ConversionError(f"{path}: no such file; give a SpikingJelly state dict, a 2021 SEW checkpoint "
                              "or a sewforge checkpoint")
    try:
        with torch.serialization.safe_globals([(_Args, "argparse.Namespace")]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or objects beyond tensors and containers
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unsupported global" in str(exc) or "weights_only" in str(exc):
            what = "objects other than tensors, containers and argparse.Namespace (refused: they would run code)"
        else:
            what = f"not a readable PyTorch file ({type(exc).__name__}: {reason[:120]})"
        raise ConversionError(f"{path}: {what}; expected a state dict of SpikingJelly's sew_resnet*/spiking_resnet*, "
                              "a 2021 SEW checkpoint {'model': ..., 'args': ...} or a sewforge checkpoint") from None


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:6]
        return f"a dict with keys {keys}{' ...' if len(obj) > 6 else ''}"
    return f"a {type(obj).__name__}"


def load_source(path: Union[str, Path]) -> Source:
    """Read ``path`` and tell its format (see the module docstring); :class:`ConversionError` if none fits."""
    path = Path(path)
    obj = _read(path)
    args: Dict[str, Any] = {}
    model_kwargs: Dict[str, Any] = {}
    model_name = None
    if isinstance(obj, Mapping) and obj.get("format") == _SEWFORGE_FORMAT:
        state = obj.get("model")
        recipe_model = (obj.get("recipe") or {}).get("model") or {}
        model_name = recipe_model.get("name")
        model_kwargs = dict(obj.get("model_kwargs") or {})
        for key in ("g", "neuron"):
            if recipe_model.get(key) is not None:
                model_kwargs.setdefault(key, recipe_model[key])
        if not _tensor_dict(state):
            raise ConversionError(f"{path}: a sewforge checkpoint without model weights; train or convert again")
        return Source(str(path), "sewforge", dict(state), {}, model_kwargs, model_name)
    if _tensor_dict(obj):
        state = dict(obj)
    elif isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("model", "state_dict", "net", "model_state_dict") if _tensor_dict(obj.get(k))),
                     None)
        if inner is None:
            raise ConversionError(f"{path}: found {_describe(obj)} but no state dict of tensors in it (looked under "
                                  "'model', 'state_dict', 'net'); expected a SpikingJelly state dict, a 2021 SEW "
                                  "checkpoint or a sewforge checkpoint")
        state = dict(inner)
        raw_args = obj.get("args")
        if isinstance(raw_args, _Args):
            args = raw_args.as_dict()
        elif isinstance(raw_args, Mapping):
            args = {k: v for k, v in raw_args.items() if isinstance(v, (str, int, float, bool, type(None)))}
    else:
        raise ConversionError(f"{path}: found {_describe(obj)}, not a state dict; expected a SpikingJelly state dict, "
                              "a 2021 SEW checkpoint or a sewforge checkpoint")
    state = _strip_prefix(state, "module.")  # saved from DistributedDataParallel
    kind = "sew2021" if any(".module.0." in k or ".module.1." in k for k in state) else "spikingjelly"
    if args.get("model") is not None:
        model_name = str(args["model"])
    return Source(str(path), kind, state, args, model_kwargs, model_name)


# ---------------------------------------------------------------------------------------------
# key mapping
# ---------------------------------------------------------------------------------------------
_RULES_2021 = [
    (re.compile(r"^(.*?)downsample\.0\.module\.0\.(.+)$"), r"\1downsample.0.\2"),
    (re.compile(r"^(.*?)downsample\.0\.module\.1\.(.+)$"), r"\1downsample.1.\2"),
    (re.compile(r"^(.*?)downsample\.1\.(.+)$"), r"\1downsample_sn.\2"),
    (re.compile(r"^(.*?)conv(\d*)\.module\.0\.(.+)$"), r"\1conv\2.\3"),
    (re.compile(r"^(.*?)conv(\d*)\.module\.1\.(.+)$"), r"\1bn\2.\3"),
]


def _rename_2021(key: str) -> str:
    for pattern, repl in _RULES_2021:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return key


def _kind_of(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if isinstance(module, nn.Linear):
        return "fc"
    if any(p.dim() == 0 for p in module.parameters(recurse=False)):
        return "neuron"
    return None


def _source_groups(state: Mapping[str, torch.Tensor]) -> List[Tuple[str, str, List[str]]]:
    """``(prefix, kind, leaf names)`` of the source's modules in the order of their keys."""
    groups: Dict[str, List[str]] = {}
    for key in state:
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, []).append(leaf)
    out = []
    for prefix, leaves in groups.items():
        w = state.get(f"{prefix}.weight")
        if "running_mean" in leaves:
            kind = "bn"
        elif w is not None and w.dim() == 4:
            kind = "conv"
        elif w is not None and w.dim() == 2:
            kind = "fc"
        elif all(state[f"{prefix}.{leaf}"].dim() == 0 for leaf in leaves):
            kind = "neuron"
        else:
            kind = "?"
        out.append((prefix, kind, leaves))
    return out


def _match_in_order(state: Mapping[str, torch.Tensor], model: nn.Module
                    ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Pair the source's modules with the model's, in forward order, kind by kind (conv, BN,
    neuron, linear); returns the renamed tensors and the problems."""
    targets = [(name, _kind_of(m)) for name, m in model.named_modules()
               if _kind_of(m) is not None and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)))]
    sources = _source_groups(state)
    mapped: Dict[str, torch.Tensor] = {}
    problems: List[str] = []
    for i, (prefix, kind, leaves) in enumerate(sources):
        if i >= len(targets):
            problems.append(f"surplus {kind} {prefix}.* (the model has only {len(targets)} layers with weights)")
            continue
        tname, tkind = targets[i]
        if tkind != kind:
            problems.append(f"layer {i}: source {prefix}.* is a {kind} but the model's {tname} is a {tkind}")
            continue
        for leaf in leaves:
            mapped[f"{tname}.{leaf}"] = state[f"{prefix}.{leaf}"]
    for tname, tkind in targets[len(sources):]:
        problems.append(f"no source layer for the model's {tkind} {tname}")
    return mapped, problems


def _check_against(mapped: Mapping[str, torch.Tensor], model: nn.Module, unmapped: List[str]) -> List[str]:
    own = model.state_dict()
    problems = [f"key {k!r} maps to nothing in the model" for k in unmapped]
    problems += [f"key {k!r} is not in the model" for k in mapped if k not in own]
    problems += [f"{k}: source shape {tuple(v.shape)} but the model has {tuple(own[k].shape)}"
                 for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems += [f"the model's {k} {tuple(v.shape)} has no source tensor" for k, v in own.items()
                 if k not in mapped and not k.endswith("num_batches_tracked")]
    return problems


def _fail(source: Source, model_name: str, problems: List[str], hint: str) -> ConversionError:
    shown = problems[:_LIST_LIMIT]
    more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return ConversionError(f"{source.path}: a {source.kind} checkpoint that does not fit {model_name!r} "
                           f"({len(problems)} problems: {'; '.join(shown)}{more}); {hint}")


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def _classes(state: Mapping[str, torch.Tensor]) -> Optional[int]:
    linear = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(linear[-1].shape[0]) if linear else None


def _has_bottleneck_sew(model: nn.Module) -> bool:
    from ..blocks import SEWBottleneck

    return any(isinstance(m, SEWBottleneck) for m in model.modules())


def convert_state_dict(src: Union[str, Path, Source], model_name: Optional[str] = None, *, g: Optional[str] = None,
                       neuron: Optional[str] = None, **model_kwargs: Any) -> Converted:
    """The sewforge network ``model_name`` with the weights of ``src`` (a path or a :class:`Source`).

    ``g`` (SEW blocks) and ``neuron`` default to what the file says: a 2021 checkpoint's
    ``args.connect_f``; PLIF where the file holds PLIF parameters ``w``; else the model's own.
    ``num_classes`` follows the file's last linear layer. Other keyword arguments go to
    :func:`sewforge.create_model`. Raises :class:`ConversionError` listing every problem.
    """
    from ..models import create_model
    from ..registry import MODELS

    source = src if isinstance(src, Source) else load_source(src)
    name = model_name or source.model_name
    if not name:
        raise ConversionError(f"{source.path}: a {source.kind} state dict does not say which network it is; "
                              "name it (--model NAME, e.g. sew_resnet18; see `sewforge list models`)")
    if name not in MODELS:
        raise ConversionError(f"{source.path}: the file names model {name!r}, which sewforge does not have; pass "
                              "--model with one of `sewforge list models`")
    notes: List[str] = []
    kwargs: Dict[str, Any] = dict(source.model_kwargs)
    if g is None and source.args.get("connect_f"):
        g = str(source.args["connect_f"])
        notes.append(f"g={g} from the checkpoint's args.connect_f")
    if neuron is None and source.kind != "sewforge":
        if any(k.endswith(".w") and v.dim() == 0 for k, v in source.state.items()):
            neuron = "PLIF"
    if g is not None:
        kwargs["g"] = g
    if neuron is not None:
        kwargs["neuron"] = neuron
    classes = _classes(source.state)
    if classes is not None and "num_classes" not in model_kwargs:
        kwargs["num_classes"] = classes
    if source.kind == "sew2021" and "T" not in model_kwargs and isinstance(source.args.get("T"), int):
        kwargs["T"] = source.args["T"]
    kwargs.update({k: v for k, v in model_kwargs.items() if v is not None})
    try:
        model = create_model(name, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ConversionError(f"{source.path}: cannot build {name!r} with {kwargs}: {msg}") from None
    if (source.kind == "spikingjelly" and str(kwargs.get("g", "")).upper() == "IAND"
            and _has_bottleneck_sew(model)):
        kwargs["g"] = "RIAND"
        model = create_model(name, **kwargs)
        note = ("SpikingJelly's Bottleneck computes IAND as A * (1 - S) (operands reversed from the paper's "
                f"(1 - A) * S); {name} was converted with g=RIAND, which computes what the source computed. "
                "Fine-tune with g=IAND only if you mean the paper's function.")
        notes.append(note)
        warnings.warn(note, ConversionWarning, stacklevel=2)
    if source.kind == "spikingjelly" and "neuron" not in kwargs:
        notes.append("the state dict holds no neuron parameters, so IF and LIF look alike; converted with the "
                     "model's default neuron (pass neuron= / --neuron LIF if the source used LIF)")
    if source.kind == "spikingjelly" and "g" not in kwargs and any(getattr(b, "uses_g", False) for b in model.modules()):
        notes.append("the state dict does not record SpikingJelly's cnf; converted with the model's default g=ADD "
                     "(pass g= / --g if the source used AND or IAND)")

    own_keys = set(model.state_dict())
    unmapped: List[str] = []
    if source.kind == "sewforge":
        mapped = dict(source.state)
        problems = _check_against(mapped, model, [])
    elif own_keys and all(k.startswith("layers.") for k in own_keys):  # a spec network: match layer by layer
        mapped, problems = _match_in_order(source.state, model)
        if not problems:
            problems = _check_against(mapped, model, [])
    else:
        mapped = {}
        for key, value in source.state.items():
            target = _rename_2021(key) if source.kind == "sew2021" else key
            if target in own_keys:
                mapped[target] = value
            else:
                unmapped.append(key)
        problems = _check_against(mapped, model, unmapped)
    if problems:
        hint = ("check --model (the file's layers suggest another architecture), --neuron (PLIF keeps a 'w' per "
                "neuron, IF/LIF none) and that the file is one of: SpikingJelly 2.0 sew_resnet*/spiking_resnet*, "
                "the 2021 SEW code, sewforge")
        raise _fail(source, name, problems, hint)
    own = model.state_dict()
    for k, v in own.items():  # num_batches_tracked may be absent from older files
        mapped.setdefault(k, v)
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=True)
    return Converted(model, name, {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))},
                     source, notes)


def save_converted(converted: Converted, dst: Union[str, Path]) -> Path:
    """Write a sewforge checkpoint (weights, the model and how it was built, a recipe for
    ``sewforge train --eval-only --checkpoint``) atomically: ``dst`` appears complete or not at all."""
    from ..train.checkpoint import save_checkpoint
    from ..train.recipe import ModelConfig, Recipe, recipe_to_dict

    kw = converted.model_kwargs
    recipe = Recipe(model=ModelConfig(name=converted.model_name, g=kw.get("g"), neuron=kw.get("neuron")))
    save_checkpoint(dst, {"epoch": 0, "model": converted.model.state_dict(), "recipe": recipe_to_dict(recipe),
                          "model_kwargs": dict(kw),
                          "converted_from": {"path": converted.source.path, "kind": converted.source.kind,
                                             "notes": list(converted.notes)}})
    return Path(dst)


def load_pretrained(name: str, path: Union[str, Path], **kwargs: Any) -> nn.Module:
    """``create_model(name, pretrained=path, **kwargs)``: the model with the weights of any
    supported file, converted as needed."""
    return convert_state_dict(path, name, **kwargs).model
