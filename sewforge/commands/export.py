"""Export a network to NIR (the Neuromorphic Intermediate Representation) for neuromorphic hardware.

MODEL_OR_CHECKPOINT is a zoo model name (exported with its initial weights, e.g. to check a tool
chain), or a checkpoint: one written by `sewforge train` / `sewforge convert`, a SpikingJelly state
dict or a 2021 SEW checkpoint (converted first; give --model where the file does not name it).
The graph is one time step; feed it T steps and average its output over T for the logits.
Conv+BN become one Conv2d; IF, LIF, PLIF, LTLIF and ChannelLIF neurons NIR IF/LIF, CUBALIF a NIR
LI into a LIF (other neurons are refused, saying why); AND/IAND Threshold nodes; max pooling of spikes
SumPool2d+Threshold. Examples:

    sewforge export sew7b_gesture gesture.nir --g IAND
    sewforge export runs/gesture/best.pt gesture.nir
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="MODEL_OR_CHECKPOINT", help="zoo model name or checkpoint file")
    p.add_argument("dst", metavar="OUT.nir", help="NIR file to write (HDF5)")
    p.add_argument("--model", default=None, metavar="NAME", help="the model of a checkpoint that does not name it")
    p.add_argument("--g", default=None, help="element-wise function of the SEW blocks (models; default their own)")
    p.add_argument("--neuron", default=None, help="neuron of every layer (models; default their own)")
    p.add_argument("--input", default=None, metavar="CxHxW", help="input shape (default: the model's own)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="precision of the parameters; thresholds are adjusted from >= to > in it (default float32)")


def run(args: argparse.Namespace) -> int:
    from ..analysis.common import AnalysisError, parse_shape
    from ..interop import ConversionError, convert_state_dict
    from ..interop.nir_export import NIRExportError, to_nir, write_nir
    from ..models import create_model, is_model_name

    try:
        shape = parse_shape(args.input) if args.input else None
        if is_model_name(args.source):
            model = create_model(args.source, g=args.g, neuron=args.neuron, input_shape=shape)
            what = args.source
        elif Path(args.source).exists():
            converted = convert_state_dict(args.source, args.model, g=args.g, neuron=args.neuron)
            model, what = converted.model, f"{args.source} ({converted.model_name})"
        else:
            raise NIRExportError(f"{args.source}: neither a zoo model name (see `sewforge list models`) nor a file")
        graph = to_nir(model.eval(), shape, dtype=args.dtype)
        path = write_nir(graph, args.dst)
    except (NIRExportError, ConversionError, AnalysisError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"sewforge export: error: {args.source}: {message}" if not message.startswith(args.source)
              else f"sewforge export: error: {message}", file=sys.stderr)
        return 2
    print(f"exported {what} to {path}: {len(graph.nodes)} NIR nodes, {len(graph.edges)} edges")
    return 0
