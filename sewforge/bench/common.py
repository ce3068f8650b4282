"""Shared pieces of the benchmarks: devices, threads, alternating timing, bandwidth, memory, tables."""
from __future__ import annotations

import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

#: How CPU peak memory is measured (printed with the tables).
RSS_METHOD = ("peak RSS above baseline in a fresh subprocess per implementation (glibc malloc with a fixed "
              "64 KiB mmap threshold, so freed buffers leave RSS): setup (layer/model, inputs, optimizer) and one "
              "warm-up step, gradients dropped, baseline = VmRSS, reset the kernel's peak counter (/proc/self/clear_refs), one "
              "step; peak+ = VmHWM - baseline")
RSS_METHOD_FALLBACK = ("peak RSS above baseline in a fresh subprocess per implementation: ru_maxrss after one "
                       "step minus ru_maxrss after setup and a warm-up step (a lower bound: "
                       "/proc/self/clear_refs was not writable)")
CUDA_METHOD = ("peak torch.cuda.max_memory_allocated during one step minus memory_allocated before it "
               "(model/layer, inputs and optimizer state excluded; gradients included)")


def has_spikingjelly() -> bool:
    return importlib.util.find_spec("spikingjelly") is not None


def pick_device(name: Optional[str]) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: Optional[int], device: torch.device) -> int:
    """Pin torch's intra-op threads: ``threads``, or 1 on CPU (comparable numbers on a shared box)."""
    if threads is None and device.type == "cpu":
        threads = 1
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''} of {os.cpu_count()})"


def versions() -> Dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for mod in ("triton", "spikingjelly"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None) or _dist_version(mod)
        except Exception:  # noqa: BLE001 - optional
            out[mod] = "not installed"
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "?"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(cases: Dict[str, Callable[[], Any]], repeat: int, warmup: int, device: torch.device,
              order: Optional[List[Tuple[str, int]]] = None) -> Dict[str, List[float]]:
    """Time each case ``repeat`` times, alternating between cases (A1 B1 A2 B2 ...), after
    ``warmup`` alternating untimed runs. Returns seconds per run; ``order`` receives (case, rep)
    in the order the timed runs happened."""
    labels = list(cases)
    for _ in range(warmup):
        for label in labels:
            cases[label]()
    sync(device)
    times: Dict[str, List[float]] = {label: [] for label in labels}
    for rep in range(repeat):
        for label in labels:
            sync(device)
            t0 = time.perf_counter()
            cases[label]()
            sync(device)
            times[label].append(time.perf_counter() - t0)
            if order is not None:
                order.append((label, rep))
    return times


def median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1e3


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28, repeat: int = 5) -> float:
    """Measured copy bandwidth ``out.copy_(buf)`` in bytes/s, counting read + write, on the
    current thread setting (one thread on CPU by default)."""
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    out = torch.empty_like(buf)
    out.copy_(buf)  # page in / warm up
    sync(device)
    best = float("inf")
    for _ in range(repeat):  # best of: a copy's floor is its fastest run
        sync(device)
        t0 = time.perf_counter()
        out.copy_(buf)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del buf, out
    return 2 * (nbytes // 4) * 4 / best


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_above_baseline(step: Callable[[], Any], warmup: int = 1,
                            prepare: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
    """Run ``step`` ``warmup`` times, then ``prepare()`` (drop the gradients, so the baseline holds
    what persists between steps), then ``step`` once more: the peak resident memory that run adds
    above the RSS before it (bytes)."""
    for _ in range(warmup):  # one-time costs (lazy library init, optimizer state) out of the measurement
        step()
    if prepare is not None:
        prepare()
    gc.collect()
    baseline = _status_kib("VmRSS")
    if baseline is not None and _reset_hwm():
        step()
        peak = _status_kib("VmHWM")
        return {"peak_bytes": max(0, (peak - baseline)) * 1024, "baseline_bytes": baseline * 1024,
                "method": RSS_METHOD}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": max(0, after - before) * 1024, "baseline_bytes": before * 1024,
            "method": RSS_METHOD_FALLBACK}


def cuda_peak_above_baseline(step: Callable[[], Any], device: torch.device,
                             prepare: Optional[Callable[[], Any]] = None) -> int:
    """Peak CUDA memory one (warm) ``step`` allocates above what is allocated after ``prepare()``."""
    if prepare is not None:
        prepare()
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - base)


def subprocess_env() -> Dict[str, str]:
    """The environment for a child ``python -m sewforge.bench``: this sewforge first on the path."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding this sewforge
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def probe_in_subprocess(spec: Dict[str, Any], timeout: float = 600.0) -> Dict[str, Any]:
    """Measure one case's CPU peak RSS in a fresh interpreter (``python -m sewforge.bench _probe``).
    Returns the probe's JSON, or ``{"error": ...}``."""
    env = subprocess_env()
    # a fixed mmap threshold turns off glibc's adaptive one: every buffer of 64 KiB or more is its
    # own mapping, returned on free, so RSS follows what is live instead of what the heap kept
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [sys.executable, "-m", "sewforge.bench", "_probe", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout:.0f}s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return {"error": f"probe exited {proc.returncode}: {tail[-1] if tail else 'no output'}"}


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:  # nan
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and spec:
        return format(value, spec)
    return str(value)


def table(rows: List[Dict[str, Any]], columns: List[Tuple[str, str, str]], markdown: bool = False) -> str:
    """Rows as a text (or markdown) table; columns are (key, header, format spec)."""
    cells = [[fmt(r.get(k), f) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))
    out = [line, "-" * len(line)]
    for c in cells:
        out.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(out)


def write_json(path: Optional[str], payload: Any) -> None:
    if not path:
        return
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def profile_top(step: Callable[[], Any], device: torch.device, rows: int = 10) -> str:
    """torch.profiler over two steps: the top ops by self CPU (and self CUDA) time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        sync(device)
    averages = prof.key_averages()
    out = [averages.table(sort_by="self_cpu_time_total", row_limit=rows)]
    if device.type == "cuda":
        out.append(averages.table(sort_by="self_cuda_time_total", row_limit=rows))
    return "\n".join(out)


def measure_peak(row: Dict[str, Any], case: Callable[[], None], device: torch.device, prepare: Callable[[], None],
                 probe: Dict[str, Any], skip_rss: bool) -> None:
    """Fill ``row`` with the peak memory of one run of ``case``: ``max_memory_allocated`` on CUDA,
    else peak RSS in a fresh subprocess described by ``probe`` (unless ``skip_rss``); failures go
    to ``row["memory_error"]`` so that the other rows are still measured."""
    try:
        if device.type == "cuda":
            row["peak_mib"] = cuda_peak_above_baseline(case, device, prepare=prepare) / 2 ** 20
            row["memory_method"] = CUDA_METHOD
        elif not skip_rss:
            res = probe_in_subprocess(probe)
            if "error" in res:
                row["memory_error"] = res["error"]
            else:
                row["peak_mib"] = res["peak_bytes"] / 2 ** 20
                row["memory_method"] = res["method"]
    except Exception as exc:  # noqa: BLE001 - reported in the row
        row["memory_error"] = f"{type(exc).__name__}: {exc}"
