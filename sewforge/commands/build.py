"""Build a network from a spec string or a zoo model name and print its layer table.

    sewforge build "c32k3s1-BN-PLIF-{SEW Block (c32)-MPk2s2}*7-FC11" --input 2x128x128 --T 16
    sewforge build sew7b_gesture --g IAND --json
    sewforge build sew_resnet50 --input 3x224x224

The table lists every layer (index, token, output shape per sample and step, parameters, dense
MACs per time step), then the totals. A spec without --input is built for the paper's DVS frames,
2x128x128 (two polarities, 128x128 pixels), and the output says so; zoo models have their own
default. Exit status 2 on a bad spec or argument, with the position of the mistake.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Optional, Tuple

__all__ = ["add_arguments", "run", "parse_input_shape", "DEFAULT_INPUT"]

#: the input of a spec built without --input: DVS128 Gesture / CIFAR10-DVS frames, as in the paper
DEFAULT_INPUT = (2, 128, 128)


def parse_input_shape(text: str) -> Tuple[int, ...]:
    """``"2x128x128"`` (or ``2,128,128``) -> ``(2, 128, 128)``."""
    parts = [p for p in re.split(r"\s*[x×X,]\s*", text.strip())]
    if len(parts) not in (1, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--input {text!r}: expected CxHxW with positive integers, e.g. 2x128x128")
    return tuple(int(p) for p in parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples of the description as written
    p.add_argument("spec", metavar="SPEC_OR_MODEL",
                   help="a spec string in the paper's notation, or a registered model name (sewforge list models)")
    p.add_argument("--input", metavar="CxHxW", help="input shape per time step, e.g. 3x32x32 (default for specs: the paper's DVS frames "
                        "2x128x128; for zoo models: their own)")
    p.add_argument("--T", type=int, default=None, help="time steps (default: the model's own)")
    p.add_argument("--g", default=None, help="element-wise function of every SEW block: ADD, AND, IAND, ...")
    p.add_argument("--neuron", default=None, help="replace every neuron type: IF, LIF, PLIF, ...")
    p.add_argument("--surrogate", default=None, help="surrogate gradient of every neuron: ATan, Sigmoid, ...")
    p.add_argument("--v-threshold", type=float, default=None, help="threshold of every neuron")
    p.add_argument("--zero-init", action="store_true", default=None, help="zero-init every residual block")
    p.add_argument("--num-classes", type=int, default=None, help="replace the number of classes")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def _error(msg: str) -> int:
    print(f"sewforge build: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models import create_model, is_model_name
    from ..registry import MODELS
    from ..spec import SpecError, SpecNet
    from ..spec.profile import format_table, profile_model, table_dict

    try:
        input_shape: Optional[Tuple[int, ...]] = parse_input_shape(args.input) if args.input else None
        name = args.spec.strip()
        overrides = dict(T=args.T, g=args.g, neuron=args.neuron, surrogate=args.surrogate,
                         v_threshold=args.v_threshold, zero_init=args.zero_init, num_classes=args.num_classes)
        is_model = is_model_name(name)
        defaulted = not is_model and input_shape is None
        if defaulted:
            from ..spec import parse

            parse(name)  # report a bad spec (or a misspelt model name) before anything else
            input_shape = DEFAULT_INPUT
        # the table needs shapes and counts only: the parameters are never allocated, so a mistyped
        # channel count costs nothing
        with torch.device("meta"):
            model = create_model(name, input_shape=input_shape, **overrides)
    except (SpecError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return _error(msg)

    info = {"model": MODELS.entry(name).name if is_model else None}
    if isinstance(model, SpecNet):
        rows = model.layer_table()
        total_macs = model.graph.total_macs
        shape = model.input_shape
        info["spec"] = model.to_spec()
    else:
        shape = input_shape or tuple(getattr(model, "input_shape", None) or MODELS.entry(name).meta("input_shape"))
        rows, total_macs = profile_model(model, shape)
        info["spec"] = None
    total_params = sum(p.numel() for p in model.parameters())
    info.update(input_shape=list(shape), T=getattr(model, "T", None), num_classes=getattr(model, "num_classes", None))

    note = (f"no --input given: built for the paper's DVS frames {'x'.join(map(str, DEFAULT_INPUT))} "
            "(pass --input CxHxW for other data)") if defaulted else None
    if args.json:
        if note:
            print(f"sewforge build: {note}", file=sys.stderr)
        print(json.dumps(table_dict(rows, total_params, total_macs, **info), indent=2))
        return 0
    title = info["model"] or ""
    if info["spec"]:
        title = f"{title}: {info['spec']}" if title else info["spec"]
    title += f"  input {'x'.join(map(str, shape))}"
    if info["T"]:
        title += f"  T={info['T']}"
    if info["num_classes"]:
        title += f"  classes={info['num_classes']}"
    if note:
        print(note)
    print(format_table(rows, total_params, total_macs, title=title))
    return 0
