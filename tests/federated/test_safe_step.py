"""Every mode converges, with its defaults, on ill-conditioned standardisable tables.

The server-key mode cannot clip (its sites see no plaintext gradient); it keeps each local step
stable by the curvature of the site's own batch instead (:func:`torchhefl.nn.functional.safe_lr`).
The tables are heavy-tailed and strongly correlated: multivariate Student-t rows (2 degrees of
freedom) with a Toeplitz scatter ``0.9^|i-j|``, raw (shifted and scaled, standardised by the
run), labels from a logistic model with a bias. At 64 and 200 features the lr-0.1 SGD step
diverges on them without clipping or the safe step (asserted below through plain mode without
clipping, which is the server-key step to 1e-5: tests/federated/test_server_key.py).

Each run takes the defaults (3 sites, lr 0.1, batch 16, 2 local epochs, FedAvg; clip norm 5 in
plain and he-clients, the safe step in he-server) with 512-bit keys and fewer rounds: 20 at 10 and
64 features, 10 at 200 (800 rows, 160 held out).
"""

import math
import warnings

import numpy as np
import pytest

from torchhefl.data import Dataset
from torchhefl.federated import build

_LOG2 = math.log(2.0)
_MODES = {
    "plain": dict(mode="plain"),
    "he-clients": dict(mode="he", key_holder="clients"),
    "he-server": dict(mode="he", key_holder="server", clip_norm=None),
}


def _table(d: int, *, n: int = 800, seed: int = 0) -> Dataset:
    g = np.random.default_rng(seed)
    i = np.arange(d)
    scatter = 0.9 ** np.abs(i[:, None] - i[None, :])
    X = g.standard_normal((n, d)) @ np.linalg.cholesky(scatter).T
    X = X / np.sqrt(g.chisquare(2.0, (n, 1)) / 2.0)  # multivariate t, 2 degrees of freedom
    Xs = (X - X.mean(0)) / X.std(0)
    w = g.standard_normal(d) / np.sqrt(d)
    y = (g.random(n) < 1.0 / (1.0 + np.exp(-(8.0 * Xs @ w + 0.5)))).astype(np.int64)
    return Dataset(5.0 * X + 3.0, y, [f"f{j}" for j in range(d)], "label")


def _losses_and_accuracy(config, dataset):
    sim = build(config, dataset=dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.server.setup()
        results = [sim.run_round(r) for r in range(1, config.rounds + 1)]
    return [r["test_loss"] for r in results], results[-1]["test_accuracy"]


@pytest.mark.parametrize("d,rounds", [(10, 20), (64, 20), (200, 10)])
def test_every_mode_converges_with_its_defaults(small_config, d, rounds):
    table = _table(d)
    accuracy = {}
    for name, mode in _MODES.items():
        losses, accuracy[name] = _losses_and_accuracy(small_config(rounds=rounds, **mode), table)
        assert all(math.isfinite(v) for v in losses), (name, losses)
        assert losses[-1] < _LOG2, (name, losses)  # better than the zero model
        assert losses[-1] <= 1.1 * float(np.median(losses)), (name, losses)  # not rising at the end
    assert abs(accuracy["he-clients"] - accuracy["plain"]) <= 0.01, accuracy
    # the safe step is at least as good as clipping: within a point below plain, or above it
    assert accuracy["he-server"] >= accuracy["plain"] - 0.01, accuracy


@pytest.mark.parametrize("d", [64, 200])
def test_the_tables_diverge_without_clipping_or_the_safe_step(small_config, d):
    losses, _ = _losses_and_accuracy(small_config(rounds=6, mode="plain", clip_norm=None), _table(d))
    assert losses[-1] > 10.0 * losses[0], losses


def test_the_safe_step_off_lets_the_server_key_run_diverge(small_config):
    from torchhefl.exceptions import ProtocolError

    cfg = small_config(rounds=30, mode="he", key_holder="server", clip_norm=None)
    cfg.extra["hem_step_limit"] = None
    with pytest.raises(ProtocolError, match=r"diverged beyond the public bound 2\^16"):
        _losses_and_accuracy(cfg, _table(64))
