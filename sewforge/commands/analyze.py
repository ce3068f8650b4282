"""The paper's analyses on any model: firing rates of A^l and O^l per block (Figures 4, 5, 11),
gradient amplitudes ||dL/dS^l|| (Figures 6-8), the degradation study (Table 2) and synaptic operations
and energy per layer against the same network as an ANN. Each writes a CSV
and a PNG into --out; docs/reproduction.md has the commands behind every figure and what they show.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["add_arguments", "run"]


# ---------------------------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------------------------
def _shape(text: str):
    from ..analysis.common import AnalysisError, parse_shape

    try:
        return parse_shape(text)
    except AnalysisError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _g(text: str) -> str:
    from ..registry import ELEMENTWISE

    try:
        return ELEMENTWISE.entry(text).name
    except KeyError as exc:
        raise argparse.ArgumentTypeError(exc.args[0]) from None


def _key_value(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. size=128), got {text!r}")
    import yaml

    key, value = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a non-empty KEY, got {text!r}")
    return key.strip(), yaml.safe_load(value) if value.strip() else value


# ---------------------------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, out: str, zero_init_default: str) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="zoo model names (see `sewforge list models`) or spec strings; several are compared")
    p.add_argument("--input", type=_shape, metavar="CxHxW",
                   help="input shape, e.g. 3x64x64 (default: the dataset's, or the model's own)")
    p.add_argument("--T", type=_positive_int, default=None,
                   help="time steps (default 4; for --checkpoint the run's own)")
    p.add_argument("--batch", type=_positive_int, default=4, help="samples in the batch (default 4)")
    p.add_argument("--data", default=None, metavar="NAME",
                   help="'random' (Bernoulli spikes, the default for models) or a registered dataset such as "
                        "'synthetic' (the default for --checkpoint is the run's own test data)")
    p.add_argument("--p", type=_probability, default=0.5, help="spike probability of --data random (default 0.5)")
    p.add_argument("--split", default=None, help="dataset split (default: train; test for --checkpoint)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (not needed by 'synthetic')")
    p.add_argument("--data-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra dataset argument, repeatable (e.g. --data-arg size=128)")
    p.add_argument("--g", type=_g, nargs="+", default=None, metavar="G",
                   help="element-wise functions to compare for models with SEW blocks: ADD AND IAND "
                        "(default: the model's own)")
    p.set_defaults(_zero_init_default=zero_init_default)  # None below: a checkpoint can tell "not given"
    p.add_argument("--zero-init", nargs="?", const="on", default=None, choices=("off", "on", "both"),
                   help=f"start the residual branches as identities: on, off or both (default {zero_init_default}; "
                        "a bare --zero-init means on)")
    p.add_argument("--neuron", default=None, help="neuron of every layer (default: the model's own)")
    p.add_argument("--surrogate", default=None, help="surrogate gradient (default: the model's own, ATan)")
    p.add_argument("--alpha", type=_positive_float, default=None,
                   help="the surrogate's shape parameter (ATan: alpha; the paper uses 2 and 3)")
    p.add_argument("--v-threshold", type=_positive_float, default=None,
                   help="firing threshold of every neuron (the paper uses 1 and 0.5)")
    p.add_argument("--num-classes", type=_positive_int, default=None, help="outputs of the model (default its own)")
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="PATH",
                   help="analyse trained models: checkpoints (best.pt / last.pt) or run folders from "
                        "`sewforge train`, compared in one figure; model and data come from each recipe")
    p.add_argument("--bn", choices=("train", "eval"), default=None,
                   help="batch norm with the batch's statistics (train: the first training step) or the running "
                        "ones (eval); default train, eval for --checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the random input and the labels")
    p.add_argument("--out", default=out, metavar="DIR", help=f"output folder (default {out})")
    p.add_argument("--title", default=None, help="figure title (default: a description of the run)")


_EXAMPLES = {
    "rates": """examples:
  sewforge analyze rates sew_resnet152 spiking_resnet152 --g ADD AND IAND --zero-init both \\
      --input 3x64x64 --batch 2                                   # Figure 5
  sewforge analyze rates sew7b_gesture spiking_resnet7b_gesture plain7b_gesture --g ADD AND IAND \\
      --data synthetic --data-arg size=128                         # Figure 11, at initialisation
  sewforge analyze rates --checkpoint runs/g-add/best.pt runs/g-and/best.pt  # trained networks (Figures 4, 11)
""",
    "grads": """examples:
  sewforge analyze grads sew_resnet152 spiking_resnet152 --g ADD AND IAND --input 3x64x64 --batch 2 \\
      --v-threshold 1 --alpha 2 --theory                           # Figure 6; (0.5, 2): 7; (1, 3): 8
""",
    "energy": """examples:
  sewforge analyze energy sew_resnet18 --input 3x64x64 --T 4       # random Bernoulli(0.5) input spikes
  sewforge analyze energy sew7b_gesture --data synthetic --data-arg size=128
  sewforge analyze energy --checkpoint sj_sew_resnet18.pth --model sew_resnet18 --input 3x224x224 --batch 1
  sewforge analyze energy sew_resnet18 --input 3x64x64 --e-mac 3.1 --e-ac 0.1   # other technology figures
""",
    "degradation": """examples:
  sewforge analyze degradation                                    # 1 2 4 8 blocks, 4 epochs, CPU minutes
  sewforge analyze degradation --depths 1 4 16 --epochs 10 --num-train 1024 --families spiking sew plain
""",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sub.required = True

    raw = argparse.RawDescriptionHelpFormatter
    rates = sub.add_parser("rates", help="firing rates of A^l and O^l per block (Figures 4, 5, 11)",
                           description="Firing rate of A^l (each block's last neuron) and of the block output O^l, "
                                       "on one batch of data or random spikes. Writes rates.csv and rates.png.",
                           formatter_class=raw, epilog=_EXAMPLES["rates"])
    _common(rates, out="runs/analysis/rates", zero_init_default="off")
    rates.set_defaults(_analysis=_run_rates)

    grads = sub.add_parser("grads", help="gradient amplitude ||dL/dS^l|| per block (Figures 6-8)",
                           description="Gradient amplitude ||dL/dS^l|| of every block input at initialisation, "
                                       "with and without zero init, and the predictions of Eq. (11) and "
                                       "Appendix A.4. Writes grads.csv and grads.png.",
                           formatter_class=raw, epilog=_EXAMPLES["grads"])
    _common(grads, out="runs/analysis/grads", zero_init_default="both")
    grads.add_argument("--loss", choices=("ce", "sum"), default="ce",
                       help="ce: cross-entropy against the labels (the first training step); sum: sum of the "
                            "logits (default ce)")
    grads.add_argument("--theory", action="store_true",
                       help="also draw the Appendix A.4 predictions where a run of blocks is an exact identity")
    grads.set_defaults(_analysis=_run_grads)

    energy = sub.add_parser("energy", help="synaptic operations and energy per layer, SNN vs the same ANN",
                            description="Per convolution / linear layer: dense MACs, measured input firing rate, "
                                        "synaptic operations and energy (45 nm: MAC 4.6 pJ, AC 0.9 pJ) against the same "
                                        "network as an ANN. Writes energy.csv and energy.png.",
                            formatter_class=raw, epilog=_EXAMPLES["energy"])
    energy.add_argument("models", nargs="?", default=None, metavar="MODEL",
                        help="zoo model name or spec string (or --checkpoint)")
    energy.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="weights: a sewforge checkpoint, a SpikingJelly state dict or a 2021 SEW checkpoint")
    energy.add_argument("--model", default=None, metavar="NAME", help="the model of a --checkpoint that does not name it")
    energy.add_argument("--input", type=_shape, metavar="CxHxW", help="input shape (default: the model's own)")
    energy.add_argument("--T", type=_positive_int, default=None, help="time steps (default: the model's own, else 4)")
    energy.add_argument("--batch", type=_positive_int, default=2, help="samples measured (default 2)")
    energy.add_argument("--data", default="random", metavar="NAME",
                        help="'random' (Bernoulli spikes, default) or a registered dataset such as 'synthetic'")
    energy.add_argument("--p", type=_probability, default=0.5, help="spike probability of --data random (default 0.5)")
    energy.add_argument("--split", default="test", help="dataset split (default test)")
    energy.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder")
    energy.add_argument("--data-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="extra dataset argument, repeatable (e.g. --data-arg size=128)")
    energy.add_argument("--g", type=_g, default=None, help="element-wise function of the SEW blocks")
    energy.add_argument("--neuron", default=None, help="neuron of every layer (default: the model's own)")
    energy.add_argument("--num-classes", type=_positive_int, default=None, help="outputs of the model")
    energy.add_argument("--e-mac", type=_positive_float, default=4.6, help="pJ per multiply-accumulate (default 4.6)")
    energy.add_argument("--e-ac", type=_positive_float, default=0.9, help="pJ per accumulate (default 0.9)")
    energy.add_argument("--seed", type=int, default=0, help="seed of the weights and the random input")
    energy.add_argument("--out", default="runs/analysis/energy", metavar="DIR",
                        help="output folder (default runs/analysis/energy)")
    energy.add_argument("--title", default=None, help="figure title")
    energy.set_defaults(_analysis=_run_energy)

    deg = sub.add_parser("degradation", help="final training loss against depth (Table 2's degradation)",
                         description="Train Spiking ResNet and SEW ResNet of several depths for the same budget on "
                                     "the built-in synthetic data and compare the final training loss. Writes "
                                     "degradation.csv and degradation.png; each run keeps its folder under "
                                     "OUT/runs.", formatter_class=raw, epilog=_EXAMPLES["degradation"])
    from ..analysis.degradation import FAMILIES, ZERO_INIT_POLICIES

    deg.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=["spiking", "sew"],
                     help="block families to train (default: spiking sew)")
    deg.add_argument("--depths", nargs="+", type=_positive_int, default=[1, 2, 4, 8],
                     help="numbers of blocks (default 1 2 4 8)")
    deg.add_argument("--epochs", type=_positive_int, default=4, help="training epochs per run (default 4)")
    deg.add_argument("--T", type=_positive_int, default=4, help="time steps (default 4)")
    deg.add_argument("--batch", type=_positive_int, default=32, help="batch size (default 32)")
    deg.add_argument("--lr", type=_positive_float, default=0.1, help="SGD learning rate, cosine schedule (default 0.1)")
    deg.add_argument("--width", type=_positive_int, default=16, help="channels of every layer (default 16)")
    deg.add_argument("--neuron", default="IF", help="neuron of every layer (default IF, as the ImageNet nets)")
    deg.add_argument("--g", type=_g, default="ADD", help="element-wise function of the SEW blocks (default ADD)")
    deg.add_argument("--zero-init", choices=ZERO_INIT_POLICIES, default="paper",
                     help="paper: Spiking ResNet with zero init, SEW without (as Table 2); on; off (default paper)")
    deg.add_argument("--num-train", type=_positive_int, default=256, help="synthetic training samples (default 256)")
    deg.add_argument("--num-test", type=_positive_int, default=128, help="synthetic test samples (default 128)")
    deg.add_argument("--size", type=_positive_int, default=32, help="synthetic frame size (default 32)")
    deg.add_argument("--seeds", type=int, nargs="+", default=[2020],
                     help="seeds; every (family, depth) is trained once per seed and the plot shows the mean "
                          "(default 2020)")
    deg.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    deg.add_argument("--overwrite", action="store_true", help="train again even where a finished run exists")
    deg.add_argument("--out", default="runs/analysis/degradation", metavar="DIR",
                     help="output folder (default runs/analysis/degradation)")
    deg.add_argument("--title", default=None, help="figure title")
    deg.set_defaults(_analysis=_run_degradation)


def run(args: argparse.Namespace) -> int:
    from ..analysis.common import AnalysisError
    from ..spec import SpecError

    expected: tuple = (AnalysisError, SpecError, KeyError, ValueError, FileNotFoundError)
    try:
        from ..train import CheckpointError, RecipeError

        expected += (CheckpointError, RecipeError)
    except ImportError:  # pragma: no cover - the trainer is part of the package
        pass
    try:
        return int(args._analysis(args) or 0)
    except expected as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"sewforge analyze {args.analysis}: error: {message}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------
# rates and grads
# ---------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, flush=True)


def _prepare(args: argparse.Namespace, kind: str):
    """(rows, description) for rates or grads, from models or from a checkpoint."""
    from ..analysis.common import AnalysisError, Variant, make_surrogate, model_blocks
    from ..analysis.study import ModelOptions, expand_variants, make_batch, measure, run_study

    dataset_kwargs = dict(args.data_arg)
    surrogate = make_surrogate(args.surrogate, args.alpha)
    loss = getattr(args, "loss", "ce")
    if args.checkpoint:
        if args.models:
            raise AnalysisError("pass either MODEL names or --checkpoint (whose recipe names the model), not both")
        ignored = [flag for flag, value in (("--g", args.g), ("--zero-init", args.zero_init),
                                            ("--neuron", args.neuron), ("--surrogate", args.surrogate),
                                            ("--alpha", args.alpha), ("--v-threshold", args.v_threshold),
                                            ("--num-classes", args.num_classes)) if value is not None]
        if ignored:
            raise AnalysisError(f"{', '.join(ignored)}: a checkpoint's model is fixed by its recipe and weights; "
                                "drop these options")
        from ..analysis.study import load_trained

        rows, described = [], []
        for path in args.checkpoint:
            model, recipe, test_set = load_trained(path)
            data = args.data or recipe.data.name
            kwargs = dict(recipe.data.kwargs) if data == recipe.data.name and not dataset_kwargs else dataset_kwargs
            batch = make_batch(data, T=args.T or recipe.data.T, batch=args.batch,
                               input_shape=args.input or tuple(test_set.input_shape),
                               num_classes=getattr(model, "num_classes", None), p=args.p, seed=args.seed,
                               split=args.split or recipe.data.test_split, root=args.data_root or recipe.data.root,
                               dataset_kwargs=kwargs)
            model.train((args.bn or "eval") == "train")
            blocks = model_blocks(model)
            g = next((b.g.name for b in blocks if getattr(b, "uses_g", False)), None)
            variant = Variant(_run_name(path), g, bool(recipe.model.zero_init))
            t0 = time.perf_counter()
            rows += measure(kind, model, variant, batch, loss)
            _say(f"  {variant.label}: {recipe.model.name}, {len(blocks)} blocks, measured in "
                 f"{time.perf_counter() - t0:.1f}s on {batch.description}")
            if batch.description not in described:
                described.append(batch.description)
        return rows, f"trained networks on {'; '.join(described)}; BN {args.bn or 'eval'}"
    if not args.models:
        raise AnalysisError("name at least one MODEL (e.g. sew_resnet18, or a spec string), or pass --checkpoint")
    data = args.data or "random"
    T = args.T or 4
    batch = make_batch(data, T=T, batch=args.batch, input_shape=args.input, num_classes=args.num_classes,
                       p=args.p, seed=args.seed, split=args.split or "train", root=args.data_root,
                       dataset_kwargs=dataset_kwargs)
    options = ModelOptions(T=T, num_classes=args.num_classes or batch.num_classes,
                           input_shape=args.input or batch.input_shape, neuron=args.neuron, surrogate=surrogate,
                           v_threshold=args.v_threshold, seed=args.seed)
    if data == "random" and args.input is None:
        raise AnalysisError("random input needs its shape: pass --input CxHxW (e.g. 3x64x64)")
    variants = expand_variants(args.models, args.g or [], args.zero_init or args._zero_init_default, options)
    bn = args.bn or "train"
    _say(f"{kind}: {len(variants)} networks on {batch.description}; BN {bn}")
    rows = run_study(kind, variants, batch, options, bn=bn, loss=loss, log=_say)
    return rows, f"{batch.description}; BN {bn}"


def _run_name(path: str) -> str:
    """``runs/gesture-and/best.pt`` -> ``gesture-and/best.pt``; a run folder -> its name."""
    p = Path(path)
    return p.name if p.is_dir() or not p.parent.name else f"{p.parent.name}/{p.name}"


def _setting(args: argparse.Namespace) -> str:
    parts = []
    if args.neuron:
        parts.append(args.neuron)
    if args.v_threshold is not None:
        parts.append(f"V_th={args.v_threshold:g}")
    if args.surrogate or args.alpha is not None:
        parts.append(f"{args.surrogate or 'ATan'}" + (f" alpha={args.alpha:g}" if args.alpha is not None else ""))
    return ", ".join(parts)


def _run_rates(args: argparse.Namespace) -> int:
    from ..analysis.plots import plot_rates
    from ..analysis.rates import RATE_COLUMNS
    from ..analysis.study import VARIANT_COLUMNS, summarize
    from ..analysis.common import write_csv

    t0 = time.perf_counter()
    rows, description = _prepare(args, "rates")
    out = Path(args.out)
    csv_path = write_csv(out / "rates.csv", rows, VARIANT_COLUMNS + RATE_COLUMNS)
    title = args.title or " ".join(filter(None, ["firing rates", _setting(args)])) + f"\n{description}"
    png_path = plot_rates(rows, out / "rates.png", title=title)
    _say("firing rate of A^l per block (rate_a):")
    for line in summarize(rows, "rate_a"):
        _say(line)
    _say("firing rate (mean) of O^l per block (rate_o):")
    for line in summarize(rows, "rate_o"):
        _say(line)
    _say(f"wrote {csv_path} and {png_path} in {time.perf_counter() - t0:.1f}s")
    return 0


def _run_grads(args: argparse.Namespace) -> int:
    from ..analysis.common import write_csv
    from ..analysis.grads import GRAD_COLUMNS
    from ..analysis.plots import plot_grads
    from ..analysis.study import VARIANT_COLUMNS, summarize

    t0 = time.perf_counter()
    rows, description = _prepare(args, "grads")
    out = Path(args.out)
    extra = ("v_threshold", "alpha")
    for r in rows:
        r["v_threshold"], r["alpha"] = args.v_threshold, args.alpha
    csv_path = write_csv(out / "grads.csv", rows, VARIANT_COLUMNS + extra + GRAD_COLUMNS)
    setting = _setting(args)
    title = args.title or f"gradient amplitude ||dL/dS^l||{' (' + setting + ')' if setting else ''}, " \
                          f"loss {args.loss}\n{description}"
    png_path = plot_grads(rows, out / "grads.png", title=title, theory=args.theory)
    _say("||dL/dS^l|| per block (first = block 0, last = the deepest block):")
    for line in summarize(rows, "grad_s"):
        _say(line)
    _report_theory(rows)
    _say(f"wrote {csv_path} and {png_path} in {time.perf_counter() - t0:.1f}s")
    return 0


def _report_theory(rows: List[Dict[str, Any]]) -> None:
    """How far the measured amplitudes are from the predictions, where the theory applies."""
    import math

    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("theory"):
            by.setdefault(r["label"], []).append(r)
    if not by:
        return
    _say("theory, on blocks inside exact identity runs (largest relative error, measured vs predicted):")
    for label, vrows in by.items():
        parts = []
        for key, name in (("predicted", "Eq. 11" if vrows[0]["theory"] == "Eq11" else "S4 (2k)"),
                          ("predicted_as_printed", "S4 as printed"), ("predicted_elementwise", "element-wise"),
                          ("predicted_membrane", "with membrane path")):
            errs = [abs(r["grad_s"] - r[key]) / r["grad_s"] for r in vrows
                    if isinstance(r.get(key), float) and math.isfinite(r[key]) and r["grad_s"] > 0]
            if errs and not (key != "predicted" and vrows[0]["theory"] == "Eq11"):
                parts.append(f"{name} {100 * max(errs):.3g}%")
        _say(f"  {label} ({len(vrows)} blocks): " + ", ".join(parts))


# ---------------------------------------------------------------------------------------------
# energy
# ---------------------------------------------------------------------------------------------
def _run_energy(args: argparse.Namespace) -> int:
    import torch

    from ..analysis.common import AnalysisError, write_csv
    from ..analysis.energy import ENERGY_COLUMNS, energy_report, plot_energy, totals
    from ..analysis.study import make_batch
    from ..interop import convert_state_dict
    from ..models import create_model

    t0 = time.perf_counter()
    if bool(args.models) == bool(args.checkpoint):
        raise AnalysisError("name one MODEL or pass --checkpoint PATH (with --model where the file does not name it)")
    torch.manual_seed(args.seed)
    kw = dict(g=args.g, neuron=args.neuron, num_classes=args.num_classes, T=args.T)
    if args.checkpoint:
        model = convert_state_dict(args.checkpoint, args.model, **kw).model
        label = args.checkpoint
    else:
        if args.input is not None:
            kw["input_shape"] = args.input
        model = create_model(args.models, **kw)
        label = args.models
    model.eval()
    T = args.T or getattr(model, "T", None) or 4
    shape = args.input or tuple(getattr(model, "input_shape", ()) or ()) or None
    batch = make_batch(args.data, T=T, batch=args.batch, input_shape=shape, num_classes=None, p=args.p,
                       seed=args.seed, split=args.split, root=args.data_root, dataset_kwargs=dict(args.data_arg))
    rows = energy_report(model, batch.x, e_mac=args.e_mac, e_ac=args.e_ac)
    out = Path(args.out)
    csv_path = write_csv(out / "energy.csv", [r.as_row() for r in rows], ENERGY_COLUMNS)
    tot = totals(rows)
    title = args.title or (f"{label}: {tot['energy_pj'] * 1e-6:.3g} uJ as SNN vs {tot['ann_energy_pj'] * 1e-6:.3g} uJ "
                           f"as ANN per sample (MAC {args.e_mac:g} pJ, AC {args.e_ac:g} pJ)\n{batch.description}")
    png_path = plot_energy(rows, out / "energy.png", title=title)
    _say(f"{label} on {batch.description}: {len(rows)} layers")
    _say(f"  dense MACs per step {tot['dense_macs']:.4g}, synaptic operations {tot['sops']:.4g} per sample")
    _say(f"  energy per sample: SNN {tot['energy_pj'] * 1e-6:.4g} uJ, ANN {tot['ann_energy_pj'] * 1e-6:.4g} uJ "
         f"(ratio {tot['ratio']:.3g})")
    _say(f"wrote {csv_path} and {png_path} in {time.perf_counter() - t0:.1f}s")
    return 0


# ---------------------------------------------------------------------------------------------
# degradation
# ---------------------------------------------------------------------------------------------
def _run_degradation(args: argparse.Namespace) -> int:
    from ..analysis.common import write_csv
    from ..analysis.degradation import DEGRADATION_COLUMNS, degradation_study
    from ..analysis.plots import plot_degradation

    t0 = time.perf_counter()
    runs = degradation_study(
        args.families, args.depths, seeds=args.seeds, out=args.out, zero_init=args.zero_init, overwrite=args.overwrite, log=_say,
        epochs=args.epochs, T=args.T, batch_size=args.batch, lr=args.lr, width=args.width, neuron=args.neuron,
        g=args.g, num_train=args.num_train, num_test=args.num_test, size=args.size, device=args.device)
    rows = [r.as_row() for r in runs]
    out = Path(args.out)
    csv_path = write_csv(out / "degradation.csv", rows, DEGRADATION_COLUMNS)
    title = args.title or (f"degradation: {args.epochs} epochs on synthetic ({args.num_train} samples, T={args.T}), "
                           f"{args.neuron}, zero init: {args.zero_init}")
    png_path = plot_degradation(rows, out / "degradation.png", title=title)
    _say("final training loss by depth" + (" (mean over seeds)" if len(args.seeds) > 1 else "") + ":")
    for family in args.families:
        cells = []
        for depth in sorted(set(args.depths)):
            losses = [r.train_loss for r in runs if r.family == family and r.depth == depth]
            cells.append(f"{depth}: {sum(losses) / len(losses):.4f}")
        _say(f"  {family:<8} " + "  ".join(cells))
    _say(f"wrote {csv_path} and {png_path} in {time.perf_counter() - t0:.1f}s")
    return 0
