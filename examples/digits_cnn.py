"""Bring your own model from Python: a small CNN on the 8x8 digits, 3 sites, under Paillier.

The model, the sites' `DataLoader`s, the loss and the optimizer are ordinary torch objects, defined
here and nowhere in the engine; `torchhefl.federated.Federation` runs them through the same
server, sites and protection modes as `python -m train.federated`. The sites hold the key pair
(`mode="he", key_holder="clients"`: the server only ever adds ciphertexts). Next to it, the same
model, loss and optimizer trained centrally: every training row at one site, in plain.

    python examples/digits_cnn.py                       # 2048-bit keys
    python examples/digits_cnn.py --run-dir runs/cnn    # also the run folder: metrics.csv, TensorBoard, checkpoints
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchhefl.data import load_digits, partition_iid, train_test_split
from torchhefl.federated import Federation


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with max-pooling and a linear head: 1,898 parameters."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Linear(16 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def images(X, y) -> TensorDataset:
    """The digits' 64 pixels as 1x8x8 images, with their labels."""
    return TensorDataset(torch.tensor(X, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(y))


def train(*, sites: int = 3, rounds: int = 10, key_bits: int = 2048, seed: int = 0, run_dir=None, echo=print) -> dict:
    """Federated and central accuracy of :class:`SmallCNN` on the digits' held-out 20 %."""
    data = load_digits()
    train_rows, test_rows = train_test_split(data, test_size=0.2, seed=seed)
    parts = partition_iid(len(train_rows), sites, seed=seed)
    loaders = [DataLoader(images(train_rows.X[i], train_rows.y[i]), batch_size=32) for i in parts]
    common = dict(
        test=images(test_rows.X, test_rows.y),
        loss=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.02, momentum=0.9),
        rounds=rounds, local_epochs=2, clip_norm=None, seed=seed,
    )
    extra = {"allow_insecure_keys": True} if key_bits < 2048 else {}
    federated = Federation(SmallCNN, loaders, mode="he", key_holder="clients", key_bits=key_bits, extra=extra, **common)
    line = (lambda s: echo("  " + s)) if echo is not None else None
    if echo is not None:
        echo(f"federated: {sites} sites, mode he, key at the sites, {key_bits}-bit keys")
    fed = federated.fit(run_dir, progress=False, echo=line)
    central = Federation(SmallCNN, [images(train_rows.X, train_rows.y)], mode="plain", batch_size=32, **common)
    if echo is not None:
        echo("central: every training row at one site, in plain")
    cen = central.fit(progress=False, echo=line)
    return {"federated": fed[-1]["test_accuracy"], "central": cen[-1]["test_accuracy"], "model": federated.model()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--run-dir", default=None, help="write the federated run's folder here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small gains nothing from intra-op threads
    out = train(sites=args.sites, rounds=args.rounds, key_bits=args.key_bits, seed=args.seed, run_dir=args.run_dir)
    print(f"test accuracy  federated (he, {args.sites} sites) {out['federated']:.4f}  central {out['central']:.4f}  "
          f"difference {100 * (out['federated'] - out['central']):+.2f} points")


if __name__ == "__main__":
    main()
