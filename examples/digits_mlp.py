"""Bring your own model: an MLP on the 8x8 digits (10 classes), trained by 3 sites under Paillier.

The engine takes any model whose state_dict the sites can encrypt: here `--model mlp` on
scikit-learn's digits (1797 images, 64 pixels), split over 3 sites that hold the key pair
(`--mode he --key-holder clients`: the server only ever adds ciphertexts). Next to it, the same
model with the same hyper-parameters trained centrally: every training row at one site, in plain.

    python examples/digits_mlp.py                      # 2048-bit keys
    python examples/digits_mlp.py --key-bits 512 --insecure-keys   # fast, for tests only

The same federated run from the command line:

    python -m train.federated --data digits --model mlp --mode he --key-holder clients
"""

import argparse
import dataclasses

import torch

from torchhefl.federated.config import TrainConfig
from torchhefl.federated.simulation import build


def train(config: TrainConfig, *, echo=print) -> float:
    """Run ``config`` in process; returns the final test accuracy."""
    sim = build(config)
    sim.server.setup()  # federated standardisation from the sites' moments
    result = None
    for rnd in range(1, config.rounds + 1):
        result = sim.run_round(rnd)
        if echo is not None:
            echo(f"  round {rnd:2d}/{config.rounds}  test accuracy {result['test_accuracy']:.4f}  "
                 f"macro F1 {result['test_f1']:.4f}  one-vs-rest AUC {result['test_auc']:.4f}")
    return float(result["test_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--hidden", default="32", help="hidden layer sizes, comma-separated")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--insecure-keys", action="store_true", help="permit --key-bits below 2048 (tests only)")
    args = parser.parse_args()
    # a model this small gains nothing from torch's intra-op threads; on a shared machine their
    # spinning made this script 3-4 times slower (44 s against 13 s for the test's settings)
    torch.set_num_threads(1)

    federated = TrainConfig(
        mode="he", key_holder="clients", key_bits=args.key_bits, data="digits", model="mlp",
        hidden=[int(h) for h in args.hidden.split(",")], clients=args.sites, rounds=args.rounds,
        local_epochs=args.local_epochs, lr=args.lr, seed=args.seed,
    )
    if args.insecure_keys:
        federated.extra["allow_insecure_keys"] = True
    # the same model and hyper-parameters, every training row at one site, nothing encrypted
    central = dataclasses.replace(federated, mode="plain", clients=1, extra={})

    print(f"federated: {args.sites} sites, --mode he --key-holder clients, {args.key_bits}-bit keys")
    fed_acc = train(federated)
    print("central: all training rows in one place")
    central_acc = train(central)
    print(f"test accuracy  federated (he, {args.sites} sites) {fed_acc:.4f}  central {central_acc:.4f}  "
          f"difference {100 * (fed_acc - central_acc):+.2f} points")


if __name__ == "__main__":
    main()
