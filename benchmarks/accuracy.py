"""Accuracy figures quoted in the README, measured with the project's own training code.

    python -m benchmarks.accuracy [--only NAME] [--seeds N]

Prints one JSON object per line:
- ``plain_defaults``: mean final test accuracy of ``--mode plain`` over seeds, per loss, beside a
  centralised scikit-learn LogisticRegression on the same splits;
- ``fedprox_vs_fedavg``: both aggregators on a Dirichlet(0.3) non-IID partition;
- ``he_clients_vs_plain``: ``--mode he --key-holder clients`` against ``--mode plain``, same seeds:
  largest weight difference and whether every test prediction agrees;
- ``privacy_table``: mean final accuracy at epsilon 0.5 ... 8 and without DP (``--epsilon`` defaults).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression as SkLogisticRegression

from torchhefl.data import Standardizer, load_wdbc, train_test_split
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.config import DP_CLIP_NORM, DP_LR

__all__ = ["main"]


def _final(cfg: TrainConfig):
    sim = build(cfg)
    sim.server.setup()
    curve = [sim.server.run_round(r)["test_accuracy"] for r in range(1, cfg.rounds + 1)]
    return sim, curve


def _predictions(sim, state) -> torch.Tensor:
    data = load_wdbc()
    train, test = train_test_split(data, test_size=sim.config.test_size, seed=sim.config.seed)
    X = torch.as_tensor(Standardizer.fit(train.X).transform(test.X))
    model = sim.server.model
    model.load_state_dict(state)
    with torch.no_grad():
        return model(X) >= 0


def bench_plain_defaults(seeds: int) -> dict:
    out = {"bench": "plain_defaults", "seeds": seeds, "config": {k: v for k, v in TrainConfig(mode="plain").to_dict().items() if k in ("rounds", "clients", "lr", "batch_size", "local_epochs", "clip_norm")}}
    for loss in ("taylor", "bce"):
        accs = [_final(TrainConfig(mode="plain", loss=loss, seed=s))[1][-1] for s in range(seeds)]
        out[f"{loss}_mean"], out[f"{loss}_min"] = round(float(np.mean(accs)), 4), round(float(np.min(accs)), 4)
    sk = []
    for s in range(seeds):
        train, test = train_test_split(load_wdbc(), test_size=0.2, seed=s)
        scaler = Standardizer.fit(train.X)
        clf = SkLogisticRegression(max_iter=5000).fit(scaler.transform(train.X), train.y)
        sk.append(clf.score(scaler.transform(test.X), test.y))
    out["sklearn_centralised_mean"] = round(float(np.mean(sk)), 4)
    return out


def bench_fedprox_vs_fedavg(seeds: int) -> dict:
    out = {"bench": "fedprox_vs_fedavg", "partition": "dirichlet", "alpha": 0.3, "seeds": seeds}
    for epochs in (2, 10):
        for agg, mu in (("fedavg", 0.0), ("fedprox", 0.01), ("fedprox", 0.1), ("fedprox", 1.0)):
            cfg = dict(mode="plain", aggregator=agg, partition="dirichlet", alpha=0.3, local_epochs=epochs)
            if mu:
                cfg["mu"] = mu
            arr = np.array([_final(TrainConfig(seed=s, **cfg))[1] for s in range(seeds)])
            name = f"epochs{epochs}_{agg}" + (f"_mu{mu}" if mu else "")
            out[name] = {"round5": round(float(arr[:, 4].mean()), 4), "round10": round(float(arr[:, 9].mean()), 4),
                         "final": round(float(arr[:, -1].mean()), 4)}
    return out


def bench_he_clients_vs_plain(seeds: int) -> dict:
    out = {"bench": "he_clients_vs_plain", "seeds": min(seeds, 5), "key_bits": 2048}
    for loss in ("taylor", "bce"):
        diffs, same_predictions, same_accuracy = [], True, True
        for s in range(min(seeds, 5)):
            plain, pc = _final(TrainConfig(mode="plain", loss=loss, seed=s))
            he, hc = _final(TrainConfig(mode="he", key_holder="clients", loss=loss, seed=s))
            a, b = plain.final_state(), he.final_state()
            diffs.append(max(float((a[k] - b[k]).abs().max()) for k in a))
            same_predictions &= bool(torch.equal(_predictions(plain, a), _predictions(plain, b)))
            same_accuracy &= pc[-1] == hc[-1]
        out[f"{loss}_max_weight_diff"] = max(diffs)
        out[f"{loss}_same_predictions"] = same_predictions
        out[f"{loss}_same_test_accuracy"] = same_accuracy
    return out


def bench_privacy_table(seeds: int) -> dict:
    """Mean final accuracy at each epsilon, with the CLI's defaults for --epsilon runs."""
    out = {"bench": "privacy_table", "seeds": seeds, "delta": 1e-5, "dp_lr": DP_LR, "dp_clip_norm": DP_CLIP_NORM}
    for eps in (0.5, 1.0, 2.0, 4.0, 8.0, None):
        dp = {} if eps is None else {"epsilon": eps, "lr": DP_LR, "clip_norm": DP_CLIP_NORM}
        accs = [_final(TrainConfig(mode="plain", seed=s, **dp))[1][-1] for s in range(seeds)]
        out[f"plain_eps_{eps}"] = round(float(np.mean(accs)), 4)
    he = [_final(TrainConfig(mode="he", key_holder="clients", seed=s, epsilon=0.5, lr=DP_LR, clip_norm=DP_CLIP_NORM))[1][-1] for s in range(seeds)]
    out["he_clients_eps_0.5"] = round(float(np.mean(he)), 4)
    out["he_clients_eps_0.5_min"] = round(float(np.min(he)), 4)
    return out


BENCHES = {
    "plain_defaults": bench_plain_defaults,
    "fedprox_vs_fedavg": bench_fedprox_vs_fedavg,
    "he_clients_vs_plain": bench_he_clients_vs_plain,
    "privacy_table": bench_privacy_table,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(BENCHES))
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    for name in args.only or list(BENCHES):
        print(json.dumps(BENCHES[name](args.seeds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
