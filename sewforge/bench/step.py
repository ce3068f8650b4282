"""One full training step of a network: sewforge vs SpikingJelly 2.0.

A step is: zero the gradients, forward, cross-entropy on the output averaged over T, backward,
``torch.optim.SGD(lr=0.1, momentum=0.9).step()``. Models (defaults as in the paper's runs):

* ``sew7b_gesture``: 7B-Net for DVS128 Gesture, T=16, B=4, frames ``[T, B, 2, 128, 128]``, 11
  classes; SpikingJelly counterpart built layer by layer (:class:`sewforge.bench.sj.SEW7BNet`,
  same layout and parameter count).
* ``sew_resnet18``: SEW ResNet-18 (ADD, IF), T=4, B=8, images ``[B, 3, 112, 112]``, 1000 classes;
  SpikingJelly's ``model.sew_resnet.sew_resnet18`` in multi-step mode. sewforge takes the image
  (its model computes the non-spiking stem once and repeats it over T, as its trainer feeds
  images); SpikingJelly takes the image repeated over T, as its ImageNet example does.

Any other sewforge zoo name runs sewforge only. Timed runs alternate between implementations.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.spikeconv import ran_event_driven
from ..models import create_model
from . import common, sj

MODELS: Dict[str, Dict[str, Any]] = {
    "sew7b_gesture": dict(T=16, batch=4, size=128, channels=2, classes=11, frames=True, neuron="PLIF", g="ADD"),
    "sew_resnet18": dict(T=4, batch=8, size=112, channels=3, classes=1000, frames=False, neuron="IF", g="ADD"),
}
QUICK = {"sew7b_gesture": dict(T=2, batch=1, size=128), "sew_resnet18": dict(T=2, batch=1, size=32)}
#: sewforge as built by default, sewforge with channels_last activations, SpikingJelly
IMPLS = ("sewforge", "sewforge-cl", "spikingjelly")

COLUMNS = [("model", "model", ""), ("implementation", "implementation", ""), ("params", "params", ","),
           ("ms", "step ms", ".1f"), ("vs_sj", "vs SJ", ".2f"), ("peak_mib", "peak+ MiB", ".1f"),
           ("mem_vs_sj", "mem vs SJ", ".2f")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="+", help=f"zoo model(s): {', '.join(MODELS)} (or 'all'; other zoo names run "
                                            "sewforge only)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--T", type=int, default=None, help="time steps (default: the model's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="input height = width (default: the model's)")
    p.add_argument("--quick", action="store_true", help="tiny T, batch and size (a smoke run)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="float32, or autocast to float16/bfloat16 (CUDA)")
    p.add_argument("--repeat", type=int, default=5, help="timed steps per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    p.add_argument("--impl", action="append", choices=IMPLS, default=None, help="implementations (repeatable)")
    p.add_argument("--sj-backend", default="auto", choices=["auto", "cuda", "triton", "torch"],
                   help="SpikingJelly's CUDA implementation (default: its own choice)")
    p.add_argument("--memory", default=None, help="sewforge create_model(memory=...) if the installed sewforge has it")
    p.add_argument("--channels-last", action="store_true",
                   help="sewforge create_model(channels_last=True) if the installed sewforge has it")
    p.add_argument("--no-rss", action="store_true", help="CPU: skip the peak-RSS subprocesses")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top 10 ops per implementation")
    p.add_argument("--budget", type=float, default=None, metavar="S", help="skip remaining models after S seconds")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


def config(model: str, T: Optional[int] = None, batch: Optional[int] = None, size: Optional[int] = None,
           quick: bool = False) -> Dict[str, Any]:
    if model in MODELS:
        cfg = dict(MODELS[model])
    else:
        from ..registry import MODELS as ZOO

        entry = ZOO.entry(model)
        meta = dict(getattr(entry, "metadata", ()) or ())
        shape = meta.get("input_shape", (3, 224, 224))
        cfg = dict(T=meta.get("default_T", 4), batch=4, size=shape[-1], channels=shape[0],
                   classes=meta.get("num_classes", 1000), frames=shape[0] == 2, neuron=None, g=None)
    if quick:
        cfg.update(QUICK.get(model, dict(T=2, batch=1, size=32)))
    for k, v in (("T", T), ("batch", batch), ("size", size)):
        if v is not None:
            cfg[k] = v
    cfg["model"] = model
    return cfg


def make_batch(cfg: Dict[str, Any], device: torch.device, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inputs as the trainer feeds them: event frames ``[T, B, C, H, W]`` (binary), or images ``[B, C, H, W]``."""
    gen = torch.Generator().manual_seed(seed)
    shape = (cfg["batch"], cfg["channels"], cfg["size"], cfg["size"])
    if cfg["frames"]:
        x = (torch.rand((cfg["T"],) + shape, generator=gen) < 0.2).float()
    else:
        x = torch.randn(shape, generator=gen)
    y = torch.randint(0, cfg["classes"], (cfg["batch"],), generator=gen)
    return x.to(device), y.to(device)


def build_sewforge(cfg: Dict[str, Any], memory: Optional[str] = None, channels_last: bool = False
                   ) -> Tuple[nn.Module, List[str]]:
    notes: List[str] = []
    kw: Dict[str, Any] = dict(T=cfg["T"], g=cfg.get("g"), neuron=cfg.get("neuron"), num_classes=cfg["classes"])
    if cfg["model"] in MODELS:
        kw["input_shape"] = (cfg["channels"], cfg["size"], cfg["size"])
    for opt, value in (("memory", memory), ("channels_last", True if channels_last else None)):
        if value is None:
            continue
        try:
            create_model(cfg["model"], **kw, **{opt: value})
            kw[opt] = value
        except TypeError:
            notes.append(f"create_model does not accept {opt}=; measured without it")
    return create_model(cfg["model"], **kw), notes


def build(key: str, cfg: Dict[str, Any], device: torch.device, args: Any = None
          ) -> Tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], str, List[str]]:
    """``(model, forward, label, notes)``; ``forward(x)`` returns logits ``[B, classes]``."""
    if key in ("sewforge", "sewforge-cl"):
        cl = key == "sewforge-cl" or getattr(args, "channels_last", False)
        model, notes = build_sewforge(cfg, getattr(args, "memory", None), cl)
        model = model.to(device)
        return model, model, "sewforge (channels_last)" if cl else "sewforge", notes
    name = cfg["model"]
    if name == "sew7b_gesture":
        net = sj.sew7b(input_size=cfg["size"], num_classes=cfg["classes"])
    elif name == "sew_resnet18":
        net = sj.sew_resnet18(num_classes=cfg["classes"])
    else:
        raise ValueError(f"no SpikingJelly counterpart for {name!r}")
    net = net.to(device)
    T, frames = cfg["T"], cfg["frames"]

    def forward(x: torch.Tensor, m=net) -> torch.Tensor:
        sj.reset(m)
        seq = x if frames else x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
        return m(seq).mean(0)

    neuron = cfg.get("neuron") or "PLIF"
    return net, forward, f"spikingjelly 2.0 ({sj.implementation(neuron, device)})", []


def train_step(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               y: torch.Tensor, amp: Optional[torch.dtype] = None) -> Tuple[Callable[[], None], torch.optim.Optimizer]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    device_type = x.device.type

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device_type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()

    return step, opt


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def probe(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Peak RSS of one training step of one implementation (run in a fresh process by ``_probe``)."""
    device = torch.device(spec.get("device", "cpu"))
    common.set_threads(spec.get("threads"), device)
    cfg = spec["cfg"]
    args = argparse.Namespace(memory=spec.get("memory"), channels_last=spec.get("channels_last", False))
    model, forward, _, _ = build(spec["impl"], cfg, device, args)
    x, y = make_batch(cfg, device)
    step, opt = train_step(model, forward, x, y)
    return common.rss_peak_above_baseline(step, prepare=lambda: opt.zero_grad(set_to_none=True))


def conv_census(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                ) -> Optional[str]:
    """How many of ``model``'s 2-D convolutions run event-driven (``sewforge.kernels.spikeconv``)
    in one recorded forward of ``x``, with the share of non-zero values in their inputs."""
    seen: List[Tuple[bool, float]] = []

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        seen.append((ran_event_driven(out), float((args[0] != 0).float().mean())))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        forward(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return None

    def span(shares: List[float]) -> str:
        return f"{min(shares):.1%}-{max(shares):.1%}" if len(shares) > 1 else f"{shares[0]:.1%}"

    event = [d for e, d in seen if e]
    dense = [d for e, d in seen if not e]
    text = f"{len(event)} of {len(seen)} convolutions event-driven"
    if event:
        text += f" (inputs {span(event)} non-zero)"
    if dense:
        text += f", the others dense (inputs {span(dense)} non-zero)"
    return text


def run(args: argparse.Namespace) -> int:
    sj.request_backend(args.sj_backend)
    device = common.pick_device(args.device)
    threads = common.set_threads(args.threads, device)
    amp = None if args.dtype == "float32" else getattr(torch, args.dtype)
    names = list(MODELS) if args.model == ["all"] else args.model
    keys = [k for k in (args.impl or IMPLS) if k != "spikingjelly" or common.has_spikingjelly()]
    t_start = time.perf_counter()
    meta: Dict[str, Any] = dict(device=common.device_name(device), device_type=device.type, threads=threads,
                                versions=common.versions(), repeat=args.repeat, warmup=args.warmup, dtype=args.dtype,
                                memory_method=common.CUDA_METHOD if device.type == "cuda" else None, notes=[])
    if not common.has_spikingjelly():
        meta["notes"].append("spikingjelly not installed (pip install 'sewforge[bench]'): no SpikingJelly rows")
    rows: List[Dict[str, Any]] = []
    order: List[List[Any]] = []
    profiles: Dict[str, str] = {}
    payload = dict(meta=meta, rows=rows, order=order, profiles=profiles)
    print(f"device: {meta['device']}; torch {torch.__version__}; spikingjelly {meta['versions'].get('spikingjelly')}")
    for name in names:
        if args.budget is not None and time.perf_counter() - t_start > args.budget:
            meta["notes"].append(f"skipped {name}: over the {args.budget:.0f}s budget")
            continue
        cfg = config(name, args.T, args.batch, args.size, args.quick)
        rows.extend(_run_model(cfg, keys, device, args, amp, threads, order, profiles, meta))
        common.write_json(args.json, payload)
    print()
    print(common.table(rows, COLUMNS))
    if meta["memory_method"] is None:
        meta["memory_method"] = next((r["memory_method"] for r in rows if r.get("memory_method")),
                                     "not measured (--no-rss)" if args.no_rss else "-")
    print(f"\nstep ms: median of {args.repeat} alternating steps (zero_grad, forward, CE on the mean over T, "
          f"backward, SGD); peak+ MiB: {meta['memory_method']}.")
    for note in meta["notes"]:
        print(f"note: {note}")
    for r in rows:
        if r.get("error") or r.get("memory_error"):
            print(f"error: {r.get('model', r.get('shape'))} {r['implementation']}: {r.get('error') or r.get('memory_error')}")
    for label, text in profiles.items():
        print(f"\nprofile: {label}\n{text}")
    meta["seconds"] = time.perf_counter() - t_start
    common.write_json(args.json, payload)
    return 0


def _run_model(cfg, keys, device, args, amp, threads, order, profiles, meta):
    name = cfg["model"]
    x, y = make_batch(cfg, device)
    shape = f"T={cfg['T']} B={cfg['batch']} {cfg['channels']}x{cfg['size']}x{cfg['size']}"
    rows: Dict[str, Dict[str, Any]] = {}
    steps: Dict[str, Callable[[], None]] = {}
    optimizers: Dict[str, torch.optim.Optimizer] = {}
    for key in keys:
        if key == "spikingjelly" and name not in MODELS:
            continue
        row: Dict[str, Any] = dict(model=name, impl=key, input=shape, T=cfg["T"], batch=cfg["batch"], size=cfg["size"])
        try:
            model, forward, label, notes = build(key, cfg, device, args)
            meta["notes"].extend(f"{name}: {n}" for n in notes)
            row.update(implementation=label, params=param_count(model))
            if key != "spikingjelly":
                census = conv_census(model, forward, x)
                if census:
                    meta["notes"].append(f"{name}: {label}: {census}")
            steps[key], optimizers[key] = train_step(model, forward, x, y, amp)
        except Exception as exc:  # noqa: BLE001 - report, go on with the others
            row.update(implementation=key, error=f"{type(exc).__name__}: {exc}")
            print(f"{name} {key}: failed: {row['error']}")
        rows[key] = row
    print(f"{name} ({shape}): parameters " + ", ".join(f"{r['implementation']} {r.get('params', 0):,}"
                                                        for r in rows.values()))
    rec: List[Tuple[str, int]] = []
    try:
        times = common.alternate(steps, args.repeat, args.warmup, device, rec)
    except Exception as exc:  # noqa: BLE001
        times = {}
        for key in steps:
            rows[key]["error"] = f"{type(exc).__name__}: {exc}"
    order.extend([name, k, r] for k, r in rec)
    for key, t in times.items():
        rows[key]["ms"] = common.median_ms(t)
        rows[key]["times_ms"] = [s * 1e3 for s in t]
    for key in list(steps):
        row = rows[key]
        common.measure_peak(row, steps[key], device, lambda o=optimizers[key]: o.zero_grad(set_to_none=True),
                            dict(kind="step", impl=key, cfg=cfg, threads=threads, device="cpu", memory=args.memory,
                                 channels_last=args.channels_last), args.no_rss)
        if args.profile:
            profiles[f"{name} / {row['implementation']}"] = common.profile_top(steps[key], device)
    ref = rows.get("spikingjelly", {})
    for row in rows.values():
        if ref.get("ms") and row.get("ms"):
            row["vs_sj"] = row["ms"] / ref["ms"]
        if ref.get("peak_mib") and row.get("peak_mib") is not None:
            row["mem_vs_sj"] = row["peak_mib"] / ref["peak_mib"]
    return list(rows.values())
