"""--epsilon: DP-SGD at every site, accounted by Opacus, logged every round."""

import pytest

from torchhefl.exceptions import ConfigError
from torchhefl.federated import build, run
from torchhefl.federated.config import DP_CLIP_NORM, DP_LR


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_epsilon_is_logged_rises_and_stays_within_target(tmp_path, small_config, mode):
    cfg = small_config(mode=mode, key_holder="clients", epsilon=1.0, lr=DP_LR, clip_norm=DP_CLIP_NORM, rounds=4)
    summary = run(cfg, tmp_path / "r", progress=False, echo=None)
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    eps = [float(r.split(",")[header.index("epsilon")]) for r in rows[1:]]
    assert len(eps) == 4
    assert all(a < b for a, b in zip(eps, eps[1:]))
    assert 0.9 < eps[-1] <= 1.0
    assert "for each record of each site's data" in summary["privacy"]


def test_private_training_differs_from_plain_training(small_config):
    """Noise is really added: two DP runs with different seeds' noise give different models."""
    def weights(**kw):
        sim = build(small_config(mode="plain", rounds=1, lr=DP_LR, clip_norm=DP_CLIP_NORM, **kw))
        sim.server.setup()
        sim.server.run_round(1)
        return sim.server.global_state()["weight"]

    plain = weights()
    private = weights(epsilon=0.5)
    # sigma ~ 40 x clip 0.3 over ~150 rows: per-coordinate noise std ~ 0.04 x lr 0.5
    assert (plain - private).abs().max() > 1e-3


def test_epsilon_refused_where_no_plaintext_gradient_exists(small_config):
    with pytest.raises(ConfigError, match="--epsilon needs plaintext local gradients"):
        build(small_config(mode="he", key_holder="server", epsilon=1.0, clip_norm=None))


def test_epsilon_needs_a_clipping_bound(small_config):
    with pytest.raises(ConfigError, match="--epsilon needs a clipping bound"):
        build(small_config(mode="plain", epsilon=1.0, clip_norm=None))
