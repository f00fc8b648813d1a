"""Pick DP-SGD defaults for WDBC: mean test accuracy over seeds at a fixed (epsilon, delta).

A standalone simulation of the issue's setting with :mod:`torchhefl.privacy`: WDBC, stratified
80/20 split, 3 IID sites, features standardised with the sites' summed moments, logistic
regression, every site running local DP-SGD (Poisson batches, per-sample clipping, Gaussian noise
calibrated for all rounds) from the global model, then sample-weighted FedAvg. For each setting
(rounds, local steps, sampling rate, lr, clip norm) it reports mean, std and min final test
accuracy over the seeds, for the Taylor loss and for BCE.

    python -m benchmarks.dp_defaults                    # the search grid, epsilon 0.5
    python -m benchmarks.dp_defaults --rounds 10 --local-steps 1 --sample-rate 1 --lr 2 --clip-norm 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from torchhefl.data import Standardizer, load_wdbc, local_moments, partition_iid, sum_moments, train_test_split
from torchhefl.nn import LogisticRegression, TaylorLoss
from torchhefl.privacy import DEFAULT_ACCOUNTANT, InsecureNoiseWarning, SecureGenerator, calibrate_noise, poisson_batches, private_step

_LOSSES = {"taylor": TaylorLoss(reduction="sum"), "bce": nn.BCEWithLogitsLoss(reduction="sum")}


@dataclass(frozen=True)
class Setting:
    rounds: int
    local_steps: int
    sample_rate: float
    lr: float
    clip_norm: float


@lru_cache(maxsize=None)
def _noise(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    return calibrate_noise(
        target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
    )


@lru_cache(maxsize=None)
def _split(seed: int, clients: int):
    data = load_wdbc()
    train, test = train_test_split(data, test_size=0.2, seed=seed)
    parts = partition_iid(len(train), clients, seed=seed)
    standardizer = Standardizer.from_moments(sum_moments(local_moments(train.X[idx]) for idx in parts))
    sites = [
        (torch.from_numpy(standardizer.transform(train.X[idx])), torch.from_numpy(train.y[idx]).double())
        for idx in parts
    ]
    return sites, torch.from_numpy(standardizer.transform(test.X)), torch.from_numpy(test.y)


def simulate(
    setting: Setting, seed: int, loss: str, *, noise_multiplier: float, clients: int = 3, stream: int = 0
) -> float:
    """Final test accuracy of one federated DP-SGD run; ``stream`` picks other batch and noise draws."""
    sites, X_test, y_test = _split(seed, clients)
    loss_fn = _LOSSES[loss]
    torch.manual_seed(seed)
    model = LogisticRegression(X_test.shape[1], dtype=torch.float64)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sizes = [len(y) for _, y in sites]
    for rnd in range(setting.rounds):
        updates = []
        for i, (X, y) in enumerate(sites):
            model.load_state_dict(global_state)
            optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr)
            # seeded on purpose: every setting sees the same draws for a seed (common random numbers),
            # which the comparison wants and a real run must never have; hence the opt-in's warning
            generator = SecureGenerator.insecure_from_seed(seed, i, rnd, stream)
            for idx in poisson_batches(len(y), sample_rate=setting.sample_rate, steps=setting.local_steps, generator=generator):
                optimizer.zero_grad(set_to_none=True)
                private_step(
                    model, loss_fn, X[idx], y[idx],
                    clip_norm=setting.clip_norm,
                    noise_multiplier=noise_multiplier,
                    expected_batch_size=setting.sample_rate * len(y),
                    generator=generator,
                )
                optimizer.step()
            updates.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        total = sum(sizes)
        global_state = {k: sum(u[k] * (n / total) for u, n in zip(updates, sizes)) for k in global_state}
    model.load_state_dict(global_state)
    with torch.no_grad():
        predicted = (model(X_test) >= 0).long()
    return float((predicted == y_test).double().mean())


def _evaluate(args: tuple) -> tuple:
    setting, seeds, epsilon, delta, accountant, baseline, stream = args
    torch.set_num_threads(1)
    warnings.filterwarnings("once", category=InsecureNoiseWarning)  # one line per worker, not per round
    if baseline:  # the same schedule without privacy: no noise, no clipping
        sigma, setting = 0.0, Setting(setting.rounds, setting.local_steps, setting.sample_rate, setting.lr, 1e12)
    else:
        sigma = _noise(epsilon, delta, setting.sample_rate, setting.rounds * setting.local_steps, accountant)
    row = {}
    for loss in _LOSSES:
        acc = np.array([simulate(setting, s, loss, noise_multiplier=sigma, stream=stream) for s in seeds])
        row[loss] = (acc.mean(), acc.std(), acc.min())
    return setting, sigma, row


def _grid(args) -> list[Setting]:
    if args.rounds is not None:
        return [Setting(args.rounds, args.local_steps, args.sample_rate, args.lr, args.clip_norm)]
    return [
        Setting(*values)
        for values in itertools.product(
            args.grid_rounds, args.grid_local_steps, args.grid_sample_rates, args.grid_lrs, args.grid_clip_norms
        )
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", default=DEFAULT_ACCOUNTANT)
    p.add_argument("--seeds", type=int, default=10, help="number of seeds")
    p.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1")
    p.add_argument("--stream", type=int, default=0, help="other batch and noise draws for the same seeds")
    p.add_argument("--baseline", action="store_true", help="run the settings without noise and clipping")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=None, help="evaluate one setting instead of the grid")
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--sample-rate", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--grid-rounds", type=int, nargs="+", default=[5, 10, 30])
    p.add_argument("--grid-local-steps", type=int, nargs="+", default=[1, 2, 5])
    p.add_argument("--grid-sample-rates", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--grid-lrs", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    p.add_argument("--grid-clip-norms", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    p.add_argument("--top", type=int, default=25, help="rows to print, best first")
    args = p.parse_args(argv)

    settings = _grid(args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = [(s, seeds, args.epsilon, args.delta, args.accountant, args.baseline, args.stream) for s in settings]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(_evaluate, jobs))
    results.sort(key=lambda r: -min(r[2]["taylor"][0], r[2]["bce"][0]))
    privacy = "no privacy (baseline)" if args.baseline else (
        f"epsilon {args.epsilon}, delta {args.delta}, {args.accountant} accountant"
    )
    print(f"{privacy}, seeds {seeds[0]}..{seeds[-1]}, {len(settings)} settings; "
          f"final test accuracy mean / std / min over seeds")
    header = f"{'R':>3} {'K':>2} {'q':>5} {'lr':>5} {'C':>5} {'sigma':>7} | {'taylor':^22} | {'bce':^22}"
    print(header)
    print("-" * len(header))
    for setting, sigma, row in results[: args.top]:
        cells = " | ".join(f"{m:.4f} {s:.4f} {lo:.4f}" for m, s, lo in (row["taylor"], row["bce"]))
        print(f"{setting.rounds:>3} {setting.local_steps:>2} {setting.sample_rate:>5g} {setting.lr:>5g} "
              f"{setting.clip_norm:>5g} {sigma:>7.2f} | {cells}")


if __name__ == "__main__":
    main()
