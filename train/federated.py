"""python -m train.federated: federated training on WDBC (or the digits, or your CSV), plaintext or Paillier-protected.

With no arguments: WDBC, 3 sites, HE mode with the key held by the sites, 2048-bit keys, 30 rounds.
Writes LOGDIR/RUN_NAME/ with TensorBoard events, metrics.csv, timings.csv, config.json and model.pt.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

from torchhefl.data import IMPUTE, IdentifierColumnWarning
from torchhefl.exceptions import ConfigError, DataError, MalformedMessageError, ProtocolError
from torchhefl.federated.config import BUILTIN_DATA, DP_CLIP_NORM, DP_LR, LOSSES, MODELS, PARTITIONS, TrainConfig
from torchhefl.federated.modes import cli_modes, key_holders, mode_of
from torchhefl.federated.server import DEFAULT_MAX_MESSAGE_BYTES
from torchhefl.federated.strategies import STRATEGIES
from torchhefl.nn.functional import SAFE_STEP
from torchhefl.secure import strict_json
from torchhefl.secure.packing import ROUNDINGS

__all__ = ["build_parser", "config_from_args", "main", "resume_config"]

_DEFAULTS = TrainConfig()


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def _column_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return names


_NO_CLIP = "none"


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes such as 64,32, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return sizes


def _clip_norm(text: str) -> float | str:
    if text.lower() == _NO_CLIP:
        return _NO_CLIP
    return _positive_float(text)


def _step_limit(text: str) -> float | None:
    if text.lower() == _NO_CLIP:
        return None
    v = _positive_float(text)
    if v > 2.0:
        raise argparse.ArgumentTypeError(f"must be at most 2 (a step is stable below lr * lambda_max = 2), got {text!r}")
    return v


def _clip_norm_of(args: argparse.Namespace) -> float | None:
    """The clipping bound: as given, or the mode's default (none in a mode whose sites train on
    ciphertexts and have no plaintext gradient to clip)."""
    mode = mode_of(args)
    given = getattr(args, "clip_norm", None)
    if given is None:
        if not mode.clips_gradients:
            return None
        return DP_CLIP_NORM if args.epsilon is not None else _DEFAULTS.clip_norm
    if given == _NO_CLIP:
        return None
    refusal = mode.clip_norm_refusal()
    if refusal is not None:
        raise ConfigError(refusal)
    return given


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m train.federated",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("protection")
    g.add_argument("--mode", choices=cli_modes(), default=_DEFAULTS.mode,
                   help="plain: parameters in the clear (the paper's DP); he: Paillier-encrypted")
    g.add_argument("--key-holder", choices=key_holders(), default=_DEFAULTS.key_holder,
                   help="with --mode he: who holds the private key (clients: server sees only ciphertexts; "
                        "server: the paper's HEM, clients train on encrypted weights)")
    g.add_argument("--key-bits", type=int, default=_DEFAULTS.key_bits, help="Paillier modulus size")
    g.add_argument("--key-dir", default=None,
                   help="load keys written by `python -m train.keys generate` instead of generating them")
    g.add_argument("--allow-insecure-keys", action="store_true",
                   help="permit --key-bits below 2048 (tests and demos only)")
    g.add_argument("--he-resolution", type=_positive_float, default=None, metavar="FLOAT",
                   help="with --key-holder clients: the packed encoding's resolution (largest step between values "
                        "the sites' uploads can hold); coarser packs more values per ciphertext. Default: the "
                        "default encoding, 2^-24 (33 values per 2048-bit ciphertext)")
    g.add_argument("--he-rounding", choices=ROUNDINGS, default=_DEFAULTS.he_rounding,
                   help="with --key-holder clients: how a site rounds to --he-resolution (nearest: error at most "
                        "half of it; stochastic: unbiased)")
    g.add_argument("--epsilon", type=_positive_float, default=None,
                   help="record-level differential privacy target per site (off by default)")
    g.add_argument("--delta", type=float, default=_DEFAULTS.delta, help="DP delta")
    g.add_argument("--dp-sample-rate", type=float, default=_DEFAULTS.dp_sample_rate,
                   help="with --epsilon: Poisson sampling rate of each local DP-SGD step (1.0: every row)")
    g.add_argument("--dp-steps", type=int, default=_DEFAULTS.dp_steps,
                   help="with --epsilon: DP-SGD steps per site per round (replaces --batch-size/--local-epochs)")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default=_DEFAULTS.model,
                   help="logreg: logistic regression (softmax regression when the data has more than 2 classes); "
                        "mlp: a multi-layer perceptron with ReLU (--hidden). --key-holder server takes only binary logreg")
    g.add_argument("--hidden", type=_hidden, default=argparse.SUPPRESS, metavar="N[,N...]",
                   help="with --model mlp: the hidden layer sizes, comma-separated "
                        f"(default: {','.join(map(str, _DEFAULTS.hidden))})")

    g = p.add_argument_group("training")
    g.add_argument("--rounds", type=int, default=_DEFAULTS.rounds, help="global rounds")
    g.add_argument("--clients", type=int, default=_DEFAULTS.clients, help="number of sites")
    g.add_argument("--fraction", type=float, default=_DEFAULTS.fraction, help="share of sites asked to train per round")
    g.add_argument("--min-clients", type=int, default=_DEFAULTS.min_clients,
                   help="fewest sites that must answer for a round to count")
    g.add_argument("--lr", type=float, default=argparse.SUPPRESS,
                   help=f"local SGD learning rate (default: {_DEFAULTS.lr}; {DP_LR} with --epsilon)")
    g.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="local mini-batch size")
    g.add_argument("--local-epochs", type=int, default=_DEFAULTS.local_epochs, help="local epochs per round")
    g.add_argument("--clip-norm", type=_clip_norm, default=argparse.SUPPRESS,
                   help=f"gradient clipping bound (clip_grad_norm_; per sample with --epsilon), or 'none' (default: {_DEFAULTS.clip_norm}; {DP_CLIP_NORM} with --epsilon; "
                        "none with --key-holder server, where it cannot be set)")
    g.add_argument("--hem-step-limit", type=_step_limit, default=SAFE_STEP, metavar="LIMIT",
                   help="with --key-holder server: each site runs a local step at min(lr, LIMIT / lambda_max) of "
                        "its batch's Taylor Hessian X^T X / 4n (+ mu), so no step can diverge (stable below 2); "
                        "a number in (0, 2], or 'none' for the raw lr")
    g.add_argument("--aggregator", default=_DEFAULTS.aggregator, metavar="{" + ",".join(STRATEGIES) + "}",
                   help="aggregation strategy")
    g.add_argument("--mu", type=float, default=_DEFAULTS.mu, help="FedProx proximal coefficient")
    g.add_argument("--loss", choices=LOSSES, default=_DEFAULTS.loss,
                   help="taylor: the paper's Taylor approximation (Eq 12); bce: exact logistic loss "
                        "(binary data; more than 2 classes always train with cross-entropy)")
    g.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seeds the split, partitions, init and batches")

    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help=f"a CSV file with a header row, or one of {', '.join(BUILTIN_DATA)} (bundled with scikit-learn; "
                        "digits: 8x8 images, 64 features, 10 classes; default: WDBC); text columns are "
                        "one-hot encoded over the categories the sites share, identifier-like columns (id, *_id, "
                        "integers unique per row) are left out with a warning")
    g.add_argument("--label", default=None,
                   help="the CSV's label column (two or more distinct values, numbers or text, mapped to 0, 1, ... in sorted order)")
    g.add_argument("--features", type=_column_list, default=None, metavar="A,B,...",
                   help="use exactly these CSV columns as features (no identifier detection)")
    g.add_argument("--drop", type=_column_list, default=None, metavar="A,B,...",
                   help="leave these CSV columns out, keep the others (no identifier detection)")
    g.add_argument("--impute", choices=IMPUTE, default=_DEFAULTS.impute,
                   help="a missing number in the CSV: filled with the federated mean, or median (a summed "
                        "histogram, within sd/1024), before standardisation; none: refuse it")
    g.add_argument("--test-size", type=float, default=_DEFAULTS.test_size, help="held-out share, stratified")
    g.add_argument("--partition", choices=PARTITIONS, default=_DEFAULTS.partition, help="how rows are spread over sites")
    g.add_argument("--alpha", type=float, default=_DEFAULTS.alpha, help="Dirichlet concentration for --partition dirichlet")

    g = p.add_argument_group("reliability")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its last checkpoint with its config.json; "
                        "give --rounds for its new length (other settings must match or be left out)")
    g.add_argument("--checkpoint-dir", default=None,
                   help="folder of the checkpoint written after every round (default: RUN_DIR/checkpoints)")
    g.add_argument("--max-message-bytes", type=_positive_int, default=DEFAULT_MAX_MESSAGE_BYTES,
                   help="largest client reply the server accepts; a bigger one leaves its sender out of the round")

    g = p.add_argument_group("output")
    g.add_argument("--logdir", default="runs", help="parent folder of run folders")
    g.add_argument("--run-name", default=None, help="run folder name (default: mode, seed and time)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


def _lr_of(args: argparse.Namespace) -> float:
    """The learning rate: as given, or the default for the run (larger with --epsilon)."""
    given = getattr(args, "lr", None)
    if given is not None:
        return given
    return DP_LR if args.epsilon is not None else _DEFAULTS.lr


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` an argparse namespace describes (validated)."""
    if args.aggregator not in STRATEGIES:
        raise ConfigError(f"unknown aggregator {args.aggregator!r}; choose one of {', '.join(STRATEGIES)}")
    if args.key_bits < 2048 and not args.allow_insecure_keys:
        raise ConfigError(f"--key-bits {args.key_bits} is insecure; use 2048 or more (or --allow-insecure-keys for tests)")
    cfg = TrainConfig(
        mode=args.mode, key_holder=args.key_holder, key_bits=args.key_bits, rounds=args.rounds,
        clients=args.clients, fraction=args.fraction, min_clients=args.min_clients, lr=_lr_of(args),
        batch_size=args.batch_size, local_epochs=args.local_epochs, clip_norm=_clip_norm_of(args),
        aggregator=args.aggregator, mu=args.mu, partition=args.partition, alpha=args.alpha, seed=args.seed,
        loss=args.loss, test_size=args.test_size, epsilon=args.epsilon, delta=args.delta, data=args.data,
        label=args.label, dp_sample_rate=args.dp_sample_rate, dp_steps=args.dp_steps,
        he_resolution=args.he_resolution, he_rounding=args.he_rounding, features=args.features,
        drop=args.drop, impute=args.impute, model=args.model,
        hidden=getattr(args, "hidden", list(_DEFAULTS.hidden)),
    )
    if hasattr(args, "hidden") and args.model != "mlp":
        raise ConfigError(f"--hidden sets the layers of --model mlp; this run's model is {args.model}")
    if args.key_dir is not None:
        cfg.extra["key_dir"] = args.key_dir
    if args.allow_insecure_keys:
        cfg.extra["allow_insecure_keys"] = True
    if args.hem_step_limit != SAFE_STEP:
        cfg.extra["hem_step_limit"] = args.hem_step_limit
    return cfg.validate()


#: flags that do not describe the training itself, so a resumed run may give them freely
_RUN_FLAGS = {"resume", "rounds", "key_dir", "checkpoint_dir", "max_message_bytes", "no_progress", "quiet"}


def resume_config(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> TrainConfig:
    """The configuration of the run in ``args.resume`` (its ``config.json``), with ``--rounds`` and
    ``--key-dir`` applied; any other flag in ``argv`` must agree with it, else :class:`ConfigError`."""
    run_dir = Path(args.resume)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there (not a run folder)")
    try:
        cfg = TrainConfig.from_dict(strict_json.loads(path.read_bytes(), what="config.json"))
    except (MalformedMessageError, TypeError) as e:
        raise ConfigError(f"--resume {run_dir}: config.json is not a run configuration ({e})") from None
    given = _given_flags(parser, argv)
    for dest in ("logdir", "run_name"):
        if dest in given:
            raise ConfigError(f"--{dest.replace('_', '-')} cannot be used with --resume: the run folder is {run_dir}")
    asked = config_from_args(args) if set(given) - _RUN_FLAGS else None
    for dest in sorted(set(given) - _RUN_FLAGS):
        flag = "--" + dest.replace("_", "-")
        if dest == "allow_insecure_keys":
            mine, theirs = True, bool(cfg.extra.get("allow_insecure_keys", False))
        elif dest == "hem_step_limit":
            mine, theirs = args.hem_step_limit, cfg.extra.get("hem_step_limit", SAFE_STEP)
        else:
            mine, theirs = getattr(asked, dest), getattr(cfg, dest)
        if mine != theirs:
            raise ConfigError(f"{flag} {mine} conflicts with the run's config.json ({theirs}); leave it out when resuming")
    if "rounds" in given:
        cfg.rounds = args.rounds
    if args.key_dir is not None:
        cfg.extra["key_dir"] = args.key_dir
    return cfg.validate()


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """The destinations of the flags actually written in ``argv`` (not their defaults)."""
    bare = build_parser()
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return vars(bare.parse_args(argv))


def _run_name(cfg: TrainConfig) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{mode_of(cfg).label()}-seed{cfg.seed}"


def _warning_line(prog: str):
    """A ``warnings.showwarning`` that prints a data warning as one line on stderr, others as usual."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, IdentifierColumnWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if args.resume is not None:
            cfg = resume_config(parser, argv, args)
            run_dir = Path(args.resume)
        else:
            cfg = config_from_args(args)
            run_dir = Path(args.logdir) / (args.run_name or _run_name(cfg))
        from torchhefl.federated.simulation import run

        echo = None if args.quiet else print
        with warnings.catch_warnings():
            warnings.simplefilter("always", IdentifierColumnWarning)
            warnings.showwarning = _warning_line(parser.prog)
            summary = run(
                cfg, run_dir, progress=not args.no_progress, echo=echo, checkpoint_dir=args.checkpoint_dir,
                resume=args.resume is not None, max_message_bytes=args.max_message_bytes,
            )
    except (ConfigError, DataError, ProtocolError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    print(summary["data"])
    multiclass = "test_count_0" in summary
    auc, f1 = ("one-vs-rest AUC", "macro F1") if multiclass else ("AUC", "F1")
    line = (
        f"done: {summary['rounds']} rounds, test accuracy {summary['test_accuracy']:.4f}, "
        f"{auc} {summary['test_auc']:.4f}, {f1} {summary['test_f1']:.4f}; "
        f"{summary['bytes_up'] / 1e6:.2f} MB up, {summary['bytes_down'] / 1e6:.2f} MB down, "
        f"{summary['seconds']:.1f} s"
    )
    print(line)
    if multiclass:
        classes = range(sum(k.startswith("test_count_") for k in summary))
        print("test rows per class:  " + " ".join(f"{k}:{summary[f'test_count_{k}']:.0f}" for k in classes))
        print("predicted per class:  " + " ".join(f"{k}:{summary[f'test_predicted_{k}']:.0f}" for k in classes))
    if "privacy" in summary:
        print(summary["privacy"])
    print(f"run folder: {summary['run_dir']}  (tensorboard --logdir {run_dir.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
