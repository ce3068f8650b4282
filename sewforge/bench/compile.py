"""torch.compile of a sewforge network: compile time, step time vs eager, graph breaks.

Compile time is the wall time of the first compiled training step (forward + backward + SGD,
so both graphs are compiled) minus nothing: it includes that step's run. Step times are medians
of alternating eager / compiled steps after it. Graph breaks come from ``torch._dynamo.explain``
on the forward pass.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List

import torch

from . import common, step

COLUMNS = [("model", "model", ""), ("variant", "variant", ""), ("ms", "step ms", ".1f"),
           ("vs_eager", "vs eager", ".2f"), ("compile_s", "compile s", ".1f"),
           ("graphs", "graphs", ""), ("graph_breaks", "graph breaks", "")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="sew7b_gesture", help="zoo model (default sew7b_gesture)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--T", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--backend", default=None,
                   help="torch.compile backend (default inductor; 'eager' with --quick on CPU, where "
                        "inductor's C++ build would dominate)")
    p.add_argument("--mode", default=None, help="torch.compile mode (e.g. max-autotune)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, metavar="FILE")


def explain(model: torch.nn.Module, x: torch.Tensor) -> Dict[str, Any]:
    import torch._dynamo as dynamo

    dynamo.reset()
    out = dynamo.explain(model)(x)
    reasons = []
    for r in getattr(out, "break_reasons", []) or []:
        text = getattr(r, "reason", str(r))
        stack = getattr(r, "user_stack", None) or []
        where = f" ({stack[-1].filename.rsplit('/', 1)[-1]}:{stack[-1].lineno})" if stack else ""
        reasons.append(f"{text}{where}")
    dynamo.reset()
    return dict(graphs=int(getattr(out, "graph_count", -1)), graph_breaks=int(getattr(out, "graph_break_count", -1)),
                ops=int(getattr(out, "op_count", -1)), break_reasons=reasons)


def run(args: argparse.Namespace) -> int:
    device = common.pick_device(args.device)
    threads = common.set_threads(args.threads, device)
    backend = args.backend or ("eager" if (args.quick and device.type == "cpu") else "inductor")
    cfg = step.config(args.model, args.T, args.batch, args.size, args.quick)
    t_start = time.perf_counter()
    model, _ = step.build_sewforge(cfg)
    model = model.to(device)
    x, y = step.make_batch(cfg, device)
    info = explain(model, x)
    eager_step, _ = step.train_step(model, model, x, y)
    compiled = torch.compile(model, backend=backend, mode=args.mode)
    compiled_step, _ = step.train_step(model, compiled, x, y)
    eager_step()
    common.sync(device)
    t0 = time.perf_counter()
    compiled_step()
    common.sync(device)
    compile_s = time.perf_counter() - t0
    times = common.alternate({"eager": eager_step, "compiled": compiled_step}, args.repeat, 1, device)
    eager_ms, comp_ms = common.median_ms(times["eager"]), common.median_ms(times["compiled"])
    rows: List[Dict[str, Any]] = [
        dict(model=args.model, variant="eager", ms=eager_ms, vs_eager=1.0),
        dict(model=args.model, variant=f"torch.compile ({backend}{', ' + args.mode if args.mode else ''})",
             ms=comp_ms, vs_eager=comp_ms / eager_ms, compile_s=compile_s, graphs=info["graphs"],
             graph_breaks=info["graph_breaks"])]
    meta = dict(device=common.device_name(device), threads=threads, versions=common.versions(), backend=backend,
                input=f"T={cfg['T']} B={cfg['batch']} {cfg['channels']}x{cfg['size']}x{cfg['size']}",
                break_reasons=info["break_reasons"], seconds=time.perf_counter() - t_start)
    print(f"device: {meta['device']}; torch {torch.__version__}; {args.model} {meta['input']}")
    print(common.table(rows, COLUMNS))
    print(f"\ncompile s: wall time of the first compiled training step; step ms: median of {args.repeat} "
          "alternating steps; graphs / graph breaks: torch._dynamo.explain on the forward.")
    for r in info["break_reasons"][:10]:
        print(f"graph break: {r}")
    common.write_json(args.json, dict(meta=meta, rows=rows))
    return 0
