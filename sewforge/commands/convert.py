"""Convert pretrained weights into a sewforge checkpoint.

Reads a SpikingJelly 2.0 state dict of ``sew_resnet*`` / ``spiking_resnet*`` (IF/LIF/PLIF) or a
checkpoint of the paper's 2021 code, maps every tensor onto the sewforge network and writes a
checkpoint that ``create_model(NAME, pretrained=DST)`` and
``sewforge train --eval-only --checkpoint DST data.name=...`` read. Nothing is written unless every
tensor found its place. Example:

    sewforge convert sj_sew_resnet50_iand.pth sew50.pt --model sew_resnet50 --g IAND --num-classes 1000
"""
from __future__ import annotations

import argparse
import sys
import warnings

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="SpikingJelly state dict, 2021 SEW checkpoint or sewforge checkpoint")
    p.add_argument("dst", metavar="DST", help="the sewforge checkpoint to write")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="sewforge zoo model (see `sewforge list models`); a 2021 checkpoint's args.model if omitted")
    p.add_argument("--g", default=None, help="element-wise function the source used: ADD, AND, IAND (SpikingJelly's "
                                             "cnf; a 2021 checkpoint's args.connect_f if omitted)")
    p.add_argument("--neuron", default=None, help="neuron of the source: IF, LIF, PLIF (default: PLIF if the file "
                                                  "holds PLIF parameters, else the model's own)")
    p.add_argument("--T", type=int, default=None, help="time steps the model records (default: the model's own)")


def run(args: argparse.Namespace) -> int:
    from ..interop import ConversionError, convert_state_dict, save_converted

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the notes below say the same, once
            converted = convert_state_dict(args.src, args.model, g=args.g, neuron=args.neuron, T=args.T)
        path = save_converted(converted, args.dst)
    except ConversionError as exc:
        print(f"sewforge convert: error: {exc}", file=sys.stderr)
        return 2
    for note in converted.notes:
        print(f"note: {note}")
    kw = ", ".join(f"{k}={v}" for k, v in sorted(converted.model_kwargs.items()))
    print(f"converted {args.src} ({converted.source.kind}, {len(converted.source.state)} tensors) to "
          f"{converted.model_name}({kw}): wrote {path}")
    return 0
