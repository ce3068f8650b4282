"""The GPU acceptance in one command: kernel tests, neuron and training-step benchmarks, torch.compile.

Sections, each with its own time budget (skipped with a note when over; a failure in one does not
stop the others), written to one markdown report:

(a) kernel tests on CUDA (``SEWFORGE_TEST_DEVICE=cuda pytest`` on the kernel test files that
    exist) and a check of the default neuron against the PyTorch reference in fp32/fp16/bf16 and
    under ``torch.autocast``;
(b) ``neurons`` at T = 4, 8, 16, 32 in fp32 and fp16 against SpikingJelly, with the bandwidth floor;
(c) ``step`` of 7B-Net and SEW ResNet-18 against SpikingJelly;
(d) ``compile`` of 7B-Net: compile time, step time vs eager, graph breaks.

Sections (b)-(d) run in child processes (a crash or hang there is contained and timed out).
Without CUDA it exits 2; ``--device cpu --quick`` runs every section on the CPU at tiny sizes as a
dry run (tests collected, not run). Exit status: 0 when every section passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from . import common, compile as compile_suite, neurons, step

#: the tests that take SEWFORGE_TEST_DEVICE (the others run on CPU tensors, in the interpreter)
KERNEL_TESTS = ("tests/test_kernels.py",)
#: seconds per section (sum 440 s: inside 8 minutes with start-up to spare)
BUDGETS = {"a": 130.0, "b": 100.0, "c": 110.0, "d": 100.0}
TITLES = {"a": "(a) Kernel tests and dtype check", "b": "(b) Neuron benchmark",
          "c": "(c) Training steps", "d": "(d) torch.compile of 7B-Net"}
SPIKE_TOLERANCE = 1e-4  # fraction of spikes allowed to differ from the reference (rounding at threshold)
GRAD_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-3, 1e-2), torch.bfloat16: (1e-2, 5e-2)}



#: the GPU goals of the neuron benchmark: time within this factor of the bandwidth floor of the
#: kernels' own traffic, and this many times faster than SpikingJelly's GPU backend
FLOOR_GOAL = 1.4
SPEEDUP_GOAL = 1.5

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="GPU_CHECK.md", help="the markdown report (default GPU_CHECK.md)")
    p.add_argument("--device", default=None, help="cuda (default); cpu only together with --quick (a dry run)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (with --device cpu: the dry run)")
    p.add_argument("--sections", default="abcd", help="which sections to run (default abcd)")
    p.add_argument("--budget", action="append", default=[], metavar="SECTION=S",
                   help=f"override a section's time budget, e.g. a=200 (defaults {BUDGETS})")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the section results as JSON")


# ---------------------------------------------------------------------------------------------
def _child(argv: List[str], timeout: float) -> Tuple[int, str, float]:
    """Run ``python -m sewforge.bench ARGV`` with a hard timeout: (rc, output tail, seconds)."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "sewforge.bench"] + argv, capture_output=True, text=True,
                              timeout=timeout, env=common.subprocess_env())
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n(killed after the {timeout:.0f}s budget)"
        rc = 124
    return rc, out, time.perf_counter() - t0


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _read(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def dtype_check(device: torch.device, quick: bool) -> List[Dict[str, Any]]:
    """The default neuron path against the reference on the same input, per dtype and under autocast."""
    from ..neurons import create_neuron

    shape = (4, 4, 256) if quick else (8, 64, 4096)
    rows = []
    for neuron in ("PLIF", "LIF", "IF"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            rows.append(_compare(neuron, dtype, shape, device, create_neuron, autocast=False))
    for dtype in (torch.float16, torch.bfloat16):
        rows.append(_compare("PLIF", dtype, shape, device, create_neuron, autocast=True))
    return rows


def _compare(neuron: str, dtype: torch.dtype, shape, device, create_neuron, autocast: bool) -> Dict[str, Any]:
    name = str(dtype).replace("torch.", "")
    row: Dict[str, Any] = dict(neuron=neuron, case=f"autocast({name}) conv->neuron" if autocast else name)
    try:
        gen = torch.Generator().manual_seed(1)
        base = torch.randn(shape, generator=gen) * 1.5 + 0.5
        outs, grads = [], []
        for backend in (None, "torch"):
            torch.manual_seed(0)
            mod = create_neuron(neuron, backend=backend).to(device)
            if autocast:
                conv = torch.nn.Conv1d(shape[1], shape[1], 3, padding=1).to(device)
                x = base.to(device).requires_grad_(True)
                with torch.autocast(device_type=device.type, dtype=dtype):
                    y = conv(x)  # [T, N, L] read as a batch of T: fp16/bf16 under autocast
                    out = mod(y.reshape(shape))
                out.float().sum().backward()
                grads.append(conv.weight.grad.float())
            else:
                x = base.to(device=device, dtype=dtype).requires_grad_(True)
                out = mod(x)
                out.backward(torch.ones_like(out))
                grads.append(x.grad.float())
            outs.append(out.detach().float())
        row["out_dtype"] = str(outs[0].dtype if not autocast else out.dtype).replace("torch.", "")
        diff = int((outs[0] != outs[1]).sum())
        row["spike_diff"] = diff
        row["spike_diff_frac"] = diff / outs[0].numel()
        atol, rtol = GRAD_TOLERANCE[dtype]
        bad = (grads[0] - grads[1]).abs() > atol + rtol * grads[1].abs()
        row["grad_max_abs_diff"] = float((grads[0] - grads[1]).abs().max())
        row["grad_bad_frac"] = float(bad.float().mean())
        row["ok"] = row["spike_diff_frac"] <= SPIKE_TOLERANCE and row["grad_bad_frac"] <= 1e-3
    except Exception as exc:  # noqa: BLE001 - recorded as a failure of this case
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    return row


# ---------------------------------------------------------------------------------------------
def section_a(device, quick, budget, tmp: Path) -> Dict[str, Any]:
    root = Path(__file__).resolve().parents[2]  # the folder holding this sewforge
    files = [f for f in KERNEL_TESTS if (root / f).exists()]
    res: Dict[str, Any] = dict(files=files)
    env = common.subprocess_env()
    env["SEWFORGE_TEST_DEVICE"] = device.type
    dry = device.type != "cuda"
    # Triton compiles every specialisation the tests draw: spread the compilations over the cores
    workers = [] if dry or importlib.util.find_spec("xdist") is None else ["-n", "8"]
    cmd = ([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + (["--collect-only"] if dry else [])
           + workers + files)
    res["command"] = ("SEWFORGE_TEST_DEVICE=%s " % device.type) + " ".join(["python"] + cmd[1:])
    t0 = time.perf_counter()
    if not files:
        res.update(rc=None, output="no kernel test files found (run from the repository root)")
    else:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, budget - 20), env=env,
                                  cwd=str(root))
            res.update(rc=proc.returncode, output=_tail(proc.stdout + proc.stderr, 8))
        except subprocess.TimeoutExpired:
            res.update(rc=124, output=f"pytest killed after {budget - 20:.0f}s (over the section budget)")
    res["pytest_seconds"] = time.perf_counter() - t0
    res["dtype_rows"] = dtype_check(device, quick)
    tests_ok = res["rc"] == 0
    dtype_ok = all(r["ok"] for r in res["dtype_rows"])
    res["passed"] = tests_ok and dtype_ok
    res["note"] = ("dry run: tests collected, not run; " if dry else "") + \
        f"pytest rc={res['rc']}; dtype/autocast cases ok: {sum(r['ok'] for r in res['dtype_rows'])}/" \
        f"{len(res['dtype_rows'])}"
    return res


def section_b(device, quick, budget, tmp: Path) -> Dict[str, Any]:
    out = tmp / "neurons.json"
    argv = ["neurons", "--device", device.type, "--dtype", "float32,float16", "--json", str(out),
            "--budget", str(budget * 0.7)]
    if quick:
        argv += ["--shape", "4,4,1024", "--shape", "8,4,1024", "--repeat", "2", "--warmup", "1", "--no-rss"]
    else:
        for T in (4, 8, 16, 32):
            argv += ["--shape", f"{T},64,16384"]
    rc, output, secs = _child(argv, budget)
    data = _read(out)
    rows = data.get("rows", [])
    res: Dict[str, Any] = dict(rc=rc, output=_tail(output), rows=rows, meta=data.get("meta", {}), command=argv)
    errors = [r for r in rows if r.get("error")]
    def off(r: Dict[str, Any]) -> bool:
        return r.get("spike_diff") is not None and r["spike_diff"] / max(r.get("numel", 1), 1) > SPIKE_TOLERANCE

    # sewforge's default path must agree with its reference; SpikingJelly's differences are reported
    # (its low-precision paths may round differently at the threshold)
    bad = [r for r in rows if r["impl"].startswith("sewforge") and off(r)]
    sj_off = [f"{r['shape']} {r['dtype']}" for r in rows if r["impl"] == "spikingjelly" and off(r)]
    res["passed"] = rc == 0 and bool(rows) and not errors and not bad
    goals = []
    for r in rows:
        if r["impl"] == "sewforge" and r.get("ms") is not None:
            floor_ok = r.get("floor_x") is not None and r["floor_x"] <= FLOOR_GOAL
            sj_ok = r.get("vs_sj") is not None and r["vs_sj"] <= 1 / SPEEDUP_GOAL
            goals.append(f"{r['shape']} {r['dtype']}: x floor {common.fmt(r.get('floor_x'))} "
                         f"({'met' if floor_ok else 'not met'}: <= {FLOOR_GOAL}), vs SJ {common.fmt(r.get('vs_sj'))} "
                         f"({'met' if sj_ok else 'not met'}: <= {1 / SPEEDUP_GOAL:.2f}, i.e. {SPEEDUP_GOAL}x faster)")
    res["goals"] = goals
    res["note"] = (f"rc={rc}; {len(rows)} rows; {len(errors)} errors; {len(bad)} sewforge rows with spikes != "
                   "reference" + (f"; SpikingJelly spikes differ from sewforge's reference at {', '.join(sj_off)}"
                                  if sj_off else ""))
    return res


def section_c(device, quick, budget, tmp: Path) -> Dict[str, Any]:
    out = tmp / "step.json"
    argv = ["step", "sew7b_gesture", "sew_resnet18", "--device", device.type, "--json", str(out),
            "--budget", str(budget * 0.6)]
    argv += ["--quick", "--repeat", "2", "--warmup", "1", "--no-rss"] if quick else ["--repeat", "5"]
    rc, output, secs = _child(argv, budget)
    data = _read(out)
    rows = data.get("rows", [])
    res: Dict[str, Any] = dict(rc=rc, output=_tail(output), rows=rows, meta=data.get("meta", {}), command=argv)
    problems = [f"{r['model']} {r['implementation']}: {r['error']}" for r in rows if r.get("error")]
    for model in step.MODELS:
        sub = {r["impl"]: r for r in rows if r["model"] == model}
        if "sewforge" not in sub or sub["sewforge"].get("ms") is None:
            problems.append(f"{model}: no sewforge timing")
        if common.has_spikingjelly() and "spikingjelly" in sub and sub["sewforge"].get("params") != sub[
                "spikingjelly"].get("params"):
            problems.append(f"{model}: parameter counts differ")
    res["passed"] = rc == 0 and not problems
    res["note"] = f"rc={rc}; " + ("; ".join(problems) if problems else "both models timed against SpikingJelly"
                                  if common.has_spikingjelly() else "SpikingJelly not installed")
    return res


def section_d(device, quick, budget, tmp: Path) -> Dict[str, Any]:
    out = tmp / "compile.json"
    argv = ["compile", "sew7b_gesture", "--device", device.type, "--json", str(out)]
    argv += ["--quick", "--T", "1", "--repeat", "2"] if quick else ["--repeat", "5"]
    rc, output, secs = _child(argv, budget)
    data = _read(out)
    rows = data.get("rows", [])
    res: Dict[str, Any] = dict(rc=rc, output=_tail(output), rows=rows, meta=data.get("meta", {}), command=argv)
    res["passed"] = rc == 0 and len(rows) == 2
    brk = rows[1].get("graph_breaks") if len(rows) == 2 else None
    res["note"] = f"rc={rc}; graph breaks: {brk}; backend {res['meta'].get('backend', '?')}"
    return res


SECTIONS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d}


# ---------------------------------------------------------------------------------------------
def report(results: Dict[str, Dict[str, Any]], device: torch.device, quick: bool, total: float,
           budgets: Dict[str, float]) -> str:
    v = common.versions()
    lines = [f"# sewforge GPU check{' (dry run)' if device.type != 'cuda' or quick else ''}", "",
             f"- device: {common.device_name(device)}",
             f"- torch {v['torch']}, triton {v.get('triton')}, spikingjelly {v.get('spikingjelly')}, "
             f"CUDA {v.get('cuda', '-')}, Python {v['python']}",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; total time {total:.0f} s",
             f"- command: `python -m sewforge.bench gpu-check {' '.join(sys.argv[2:]) if len(sys.argv) > 2 else ''}`",
             "", "| section | status | seconds | budget s | note |", "|---|---|---|---|---|"]
    for key, title in TITLES.items():
        r = results.get(key)
        if r is None:
            lines.append(f"| {title} | not run | - | {budgets[key]:.0f} | not selected |")
            continue
        lines.append(f"| {title} | {r['status']} | {r.get('seconds', 0):.0f} | {budgets[key]:.0f} | "
                     f"{r.get('note', '').replace('|', '/')} |")
    for key, title in TITLES.items():
        r = results.get(key)
        lines += ["", f"## {title}", ""]
        if r is None:
            lines.append("Not selected.")
            continue
        lines.append(f"Status: **{r['status']}** ({r.get('seconds', 0):.0f} s of {budgets[key]:.0f} s). {r.get('note', '')}")
        if r.get("error"):
            lines += ["", "```", r["error"], "```"]
        if key == "a":
            lines += ["", f"`{r.get('command', '')}`", "", "```", r.get("output", ""), "```", "",
                      "Default neuron path vs the PyTorch reference, same input (spikes that differ; gradient "
                      "elements outside tolerance):", ""]
            lines.append(common.table(r.get("dtype_rows", []), [
                ("neuron", "neuron", ""), ("case", "case", ""), ("out_dtype", "output dtype", ""),
                ("spike_diff", "spikes !=", ""), ("grad_max_abs_diff", "grad max |diff|", ".2e"),
                ("grad_bad_frac", "grad out of tol", ".2e"), ("ok", "ok", ""), ("error", "error", "")],
                markdown=True))
        elif key in "bcd":
            cols = {"b": neurons.COLUMNS, "c": step.COLUMNS, "d": compile_suite.COLUMNS}[key]
            meta = r.get("meta", {})
            if key == "b" and meta:
                lines += ["", f"Copy bandwidth {meta.get('copy_bandwidth_gbs', float('nan')):.0f} GB/s; "
                              f"bytes per element and step {meta.get('traffic_bytes')} ({meta.get('traffic_source')})."]
            if r.get("rows"):
                lines += ["", common.table(r["rows"], cols, markdown=True)]
            for note in meta.get("notes", []):
                lines.append(f"\n- note: {note}")
            if key == "b" and r.get("goals"):
                lines += ["", f"Goals (fused kernel within {FLOOR_GOAL}x of the bandwidth floor of its own traffic, "
                              f"{SPEEDUP_GOAL}x faster than SpikingJelly's GPU backend):", ""]
                lines += [f"- {g}" for g in r["goals"]]
            if key == "d":
                for reason in meta.get("break_reasons", [])[:10]:
                    lines.append(f"- graph break: {reason}")
            if r.get("status") != "PASS" or not r.get("rows"):
                lines += ["", "```", r.get("output", ""), "```"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device) if args.device else torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu-check needs a CUDA device and none is available (for a dry run on the CPU: "
              "python -m sewforge.bench gpu-check --device cpu --quick)", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.quick:
        print("gpu-check on a non-CUDA device only as a dry run: add --quick", file=sys.stderr)
        return 2
    budgets = dict(BUDGETS)
    for item in args.budget:
        key, _, value = item.partition("=")
        if key not in budgets:
            raise SystemExit(f"--budget {item!r}: sections are {', '.join(budgets)}")
        budgets[key] = float(value)
    t_start = time.perf_counter()
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sewforge-gpu-check-") as tmp:
        for key in args.sections:
            if key not in SECTIONS:
                continue
            print(f"gpu-check: {TITLES[key]} (budget {budgets[key]:.0f} s) ...", flush=True)
            t0 = time.perf_counter()
            try:
                res = SECTIONS[key](device, args.quick, budgets[key], Path(tmp))
                res["status"] = "PASS" if res.get("passed") else "FAIL"
            except Exception as exc:  # noqa: BLE001 - a section's failure must not stop the others
                import traceback

                res = dict(status="FAIL", note=f"{type(exc).__name__}: {exc}", error=traceback.format_exc(limit=5))
            res["seconds"] = time.perf_counter() - t0
            if res["seconds"] > budgets[key] and res["status"] == "PASS":
                res["note"] = res.get("note", "") + f" (took {res['seconds']:.0f} s, over the budget)"
            if res.get("rc") == 124:
                res["status"] = "SKIPPED (over budget)"
            results[key] = res
            print(f"gpu-check: {TITLES[key]}: {res['status']} in {res['seconds']:.0f} s; {res.get('note', '')}",
                  flush=True)
    total = time.perf_counter() - t_start
    text = report(results, device, args.quick, total, budgets)
    Path(args.out).write_text(text)
    common.write_json(args.json, dict(results=results, seconds=total, budgets=budgets))
    print(f"gpu-check: report written to {args.out} ({total:.0f} s)")
    return 0 if all(r["status"] == "PASS" for r in results.values()) else 1
