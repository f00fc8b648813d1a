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


def _one_round_weights(small_config, **kw):
    sim = build(small_config(mode="plain", rounds=1, lr=DP_LR, clip_norm=DP_CLIP_NORM, **kw))
    sim.server.setup()
    sim.server.run_round(1)
    return sim.server.global_state()["weight"]


def test_the_same_seed_draws_other_noise_each_run(small_config):
    """The noise is not a function of the seed (tests/adversary/test_dp_noise_regeneration.py attacks it)."""
    a, b = _one_round_weights(small_config, epsilon=0.5), _one_round_weights(small_config, epsilon=0.5)
    # one round at epsilon 0.5: sigma ~7.2 x clip 0.3 x lr 0.5 x sqrt(3 sites) / 455 rows ~ 0.004 per
    # coordinate of the global model; all 30 within 1e-3 of each other has probability ~1e-25
    assert (a - b).abs().max() > 1e-3


def test_private_training_differs_from_plain_training(small_config):
    """Noise is really added: a DP run's model is not the plain run's."""
    plain = _one_round_weights(small_config)
    private = _one_round_weights(small_config, epsilon=0.5)
    assert (plain - private).abs().max() > 1e-3  # noise std of the global model ~0.004 per coordinate (above)


def test_epsilon_refused_where_no_plaintext_gradient_exists(small_config):
    with pytest.raises(ConfigError, match="--epsilon needs plaintext local gradients"):
        build(small_config(mode="he", key_holder="server", epsilon=1.0, clip_norm=None))


def test_epsilon_needs_a_clipping_bound(small_config):
    with pytest.raises(ConfigError, match="--epsilon needs a clipping bound"):
        build(small_config(mode="plain", epsilon=1.0, clip_norm=None))
