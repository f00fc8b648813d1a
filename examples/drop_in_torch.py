"""An ordinary PyTorch FedAvg script whose sites exchange only encrypted bytes.

Three "sites" train their own copy of a torch model on their own rows with their own optimizer,
DataLoader and loop. What crosses the network is SecureStateDict bytes: the server sums
ciphertexts it cannot read, and the sites decrypt the average. The lines marked `# torchhefl` are
the whole change from a plaintext FedAvg script.

    python examples/drop_in_torch.py --rounds 10
"""

import argparse

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchhefl.secure import SecureStateDict, generate_keypair  # torchhefl


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 1))


def local_train(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb).squeeze(-1), yb).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sites", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    scaler = StandardScaler().fit(X_train)  # (a real federation fits this from site moments)
    X_train, X_test = (torch.tensor(scaler.transform(a), dtype=torch.float32) for a in (X_train, X_test))
    y_train, y_test = (torch.tensor(a, dtype=torch.float32) for a in (y_train, y_test))
    shards = torch.arange(len(y_train)).chunk(args.sites)
    loaders = [DataLoader(TensorDataset(X_train[i], y_train[i]), batch_size=16, shuffle=True) for i in shards]

    public_key, private_key = generate_keypair(2048)  # torchhefl: the sites hold this pair
    global_model = make_model()
    plain_model = make_model()  # the same FedAvg in plaintext, for comparison
    plain_model.load_state_dict(global_model.state_dict())

    for rnd in range(1, args.rounds + 1):
        uploads, plain_updates = [], []
        for site, loader in enumerate(loaders):
            model = make_model()
            model.load_state_dict(global_model.state_dict())
            torch.manual_seed(1000 * rnd + site)
            local_train(model, loader, epochs=1, lr=0.1)
            n = len(loader.dataset)
            uploads.append(SecureStateDict.encrypt(model.state_dict(), public_key, weight=n, coins=private_key.coins()).to_bytes())  # torchhefl

            twin = make_model()
            twin.load_state_dict(plain_model.state_dict())
            torch.manual_seed(1000 * rnd + site)
            local_train(twin, loader, epochs=1, lr=0.1)
            plain_updates.append((twin.state_dict(), n))

        # server: adds ciphertexts (each weighted by its encrypted count); it has no private key
        received = [SecureStateDict.from_bytes(b, public_key=public_key) for b in uploads]  # torchhefl
        broadcast = SecureStateDict.weighted_average(received).to_bytes()  # torchhefl

        # sites: decrypt the sample-weighted average and carry on
        average = SecureStateDict.from_bytes(broadcast, public_key=public_key).decrypt(private_key)  # torchhefl
        global_model.load_state_dict(average)

        total = sum(n for _, n in plain_updates)
        plain_model.load_state_dict(
            {k: sum(s[k] * n for s, n in plain_updates) / total for k in plain_updates[0][0]}
        )
        with torch.no_grad():
            acc = ((global_model(X_test).squeeze(-1) >= 0).float() == y_test).float().mean().item()
            diff = max((global_model.state_dict()[k] - plain_model.state_dict()[k]).abs().max().item() for k in average)
        print(f"round {rnd:2d}  test accuracy {acc:.4f}  bytes up {sum(map(len, uploads))}  "
              f"max |encrypted - plaintext FedAvg| {diff:.1e}")


if __name__ == "__main__":
    main()
