"""The paper's analyses on any model: firing rates of A^l and O^l per block (Figures 4, 5, 11),
gradient amplitudes ||dL/dS^l|| (Figures 6-8), the degradation study (Table 2) and synaptic operations
and energy per layer against the same network as an ANN. Each writes a CSV
and a PNG into --out; docs/reproduction.md has the commands behind every figure and what they show.
This module reads the arguments and prints; :mod:`sewforge.analysis.reports` runs the analyses.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

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
# the analyses (sewforge.analysis.reports), with the arguments given
# ---------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, flush=True)


def _print(report: Any) -> int:
    for line in report.lines:
        _say(line)
    _say(f"wrote {report.csv} and {report.png} in {report.seconds:.1f}s")
    return 0


def _study_options(args: argparse.Namespace) -> Any:
    from ..analysis.reports import StudyOptions

    return StudyOptions(models=args.models, checkpoints=args.checkpoint or (), input_shape=args.input, T=args.T,
                        batch=args.batch, data=args.data, p=args.p, split=args.split, root=args.data_root,
                        dataset_kwargs=dict(args.data_arg), gs=args.g, zero_init=args.zero_init,
                        zero_init_default=args._zero_init_default, neuron=args.neuron, surrogate=args.surrogate,
                        alpha=args.alpha, v_threshold=args.v_threshold, num_classes=args.num_classes, bn=args.bn,
                        seed=args.seed)


def _run_rates(args: argparse.Namespace) -> int:
    from ..analysis.reports import analyze_rates

    return _print(analyze_rates(_study_options(args), out=args.out, title=args.title, log=_say))


def _run_grads(args: argparse.Namespace) -> int:
    from ..analysis.reports import analyze_grads

    return _print(analyze_grads(_study_options(args), out=args.out, loss=args.loss, theory=args.theory,
                                title=args.title, log=_say))


def _run_energy(args: argparse.Namespace) -> int:
    from ..analysis.common import AnalysisError
    from ..analysis.reports import analyze_energy

    if bool(args.models) == bool(args.checkpoint):
        raise AnalysisError("name one MODEL or pass --checkpoint PATH (with --model where the file does not name it)")
    kw = dict(g=args.g, neuron=args.neuron, num_classes=args.num_classes)
    model: Any = args.models
    if args.checkpoint:  # converting a checkpoint is sewforge.interop's, a layer beside the analyses
        import torch

        from ..interop import convert_state_dict

        torch.manual_seed(args.seed)
        model = convert_state_dict(args.checkpoint, args.model, T=args.T, **kw).model
        kw = {}
    return _print(analyze_energy(model, out=args.out, label=args.checkpoint or args.models, T=args.T,
                                 input_shape=args.input, batch=args.batch, data=args.data, p=args.p, split=args.split,
                                 root=args.data_root, dataset_kwargs=dict(args.data_arg), e_mac=args.e_mac,
                                 e_ac=args.e_ac, seed=args.seed, title=args.title, **kw))


def _run_degradation(args: argparse.Namespace) -> int:
    from ..analysis.reports import analyze_degradation

    return _print(analyze_degradation(
        args.families, args.depths, out=args.out, seeds=args.seeds, zero_init=args.zero_init, overwrite=args.overwrite,
        epochs=args.epochs, T=args.T, neuron=args.neuron, num_train=args.num_train, title=args.title, log=_say,
        batch_size=args.batch, lr=args.lr, width=args.width, g=args.g, num_test=args.num_test, size=args.size,
        device=args.device))
