"""The server regenerates a site's DP noise (or its Poisson batches) from public values, and fails.

The attacker is the real plain-mode ``Server``, which reads every site's update, and knows
everything public: the seed, the run config (hence the noise multiplier, the clipping bound, the
learning rate), the global model it sent, each site's row count (``num_examples`` in the update).
To make the attack as strong as possible it is also handed the noise-free update (computed here
with ``noise_multiplier=0`` on the same batch), so the only thing it lacks is the noise. It
regenerates the noise the way the code could have drawn it from public values, both as the code
before this test drew it (``round_generator(seed, site, round)``, a ``torch.Generator``) and as
the seeded opt-in draws it (``SecureGenerator.insecure_from_seed(seed, site, round)``), and
subtracts it. Against the default the recovered gradient stays a whole noise norm away from the
noise-free one; against ``insecure_seeded_noise`` (the control, so that the test can fail) the
same attack recovers it to rounding error. With the clients' key (``--mode he --key-holder
clients``) any site that decrypts the aggregate runs the same attack on the same noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

from torchhefl.federated import TrainConfig, build, round_generator
from torchhefl.federated.config import DP_CLIP_NORM, DP_LR
from torchhefl.federated.dp import SiteDP
from torchhefl.federated.simulation import dp_config
from torchhefl.privacy import InsecureNoiseWarning, private_step

SEED = 3
SEEDED = {"insecure_seeded_dp_noise": True}


def _config(extra: dict | None = None, **overrides) -> TrainConfig:
    settings = dict(mode="plain", epsilon=1.0, lr=DP_LR, clip_norm=DP_CLIP_NORM, seed=SEED, extra=dict(extra or {}))
    settings.update(overrides)
    return TrainConfig(**settings)


def _first_round(config: TrainConfig):
    """Run round 1 with a server that keeps each update it reads; returns (sim, global model sent, updates)."""
    sim = build(config)
    sim.server.setup()
    sent = {k: v.detach().clone().double() for k, v in sim.server.global_state().items()}
    seen = {}
    read = sim.server.read_fit_reply

    def keep(cid, answer, **kwargs):
        msg, update = read(cid, answer, **kwargs)
        seen[cid] = update
        return msg, update

    sim.server.read_fit_reply = keep
    sim.server.run_round(1)
    return sim, sent, seen


def _flat(tensors) -> torch.Tensor:
    return torch.cat([torch.as_tensor(t, dtype=torch.float64).reshape(-1) for t in tensors])


def _noise_free_gradient(sim, site, sent) -> torch.Tensor:
    """What the site's DP step computes before the noise: clipped per-sample gradients, summed, / B."""
    model = sim.clients[site].model
    model.load_state_dict({k: v.to(next(model.parameters()).dtype) for k, v in sent.items()})
    dp = sim.clients[site].privacy
    private_step(
        model, sim.clients[site].loss_fn, sim.clients[site].X, sim.clients[site].y,
        clip_norm=dp.dp.clip_norm, noise_multiplier=0.0, expected_batch_size=dp.expected_batch_size,
    )
    return _flat(p.grad for p in model.parameters())


def _noise_from_round_generator(config, site, n, shapes, std, batch) -> torch.Tensor:
    """The noise / B as the pre-fix code drew it: the Poisson mask, then one randn per parameter."""
    g = round_generator(config.seed, site, 1)
    torch.rand(n, generator=g)  # the one step's sampling mask
    return _flat(std * torch.randn(s, generator=g, dtype=torch.float64) / batch for s in shapes)


def _noise_from_seeded_generator(config, site, n, shapes, std, batch) -> torch.Tensor:
    """The noise / B as ``insecure_seeded_noise`` draws it, replayed through the site's own code."""
    seeded = SiteDP(dataclasses.replace(dp_config(config), insecure_seeded_noise=True), n)
    with pytest.warns(InsecureNoiseWarning):
        g = seeded.generator(config.seed, site, 1)
    list(seeded.batches(n, g))
    return _flat(g.normal(s, std=std) / batch for s in shapes)


ATTACKS = {"round_generator": _noise_from_round_generator, "seeded_generator": _noise_from_seeded_generator}


def _attack(extra: dict, regenerate) -> tuple[float, float]:
    """(distance of the recovered gradients from the noise-free ones, distance of the updates
    as sent), both pooled over the sites and divided by the expected noise norm sigma*C*sqrt(d)/B."""
    config = _config(extra)
    if extra:
        with pytest.warns(InsecureNoiseWarning):
            sim, sent, seen = _first_round(config)
    else:
        sim, sent, seen = _first_round(config)
    dp = dp_config(config)
    std = dp.noise_multiplier * dp.clip_norm
    shapes = [v.shape for v in sent.values()]
    d = sum(math.prod(s) for s in shapes)
    recovered_sq = sent_sq = expected_sq = 0.0
    for site, client in enumerate(sim.clients):
        arrays, n = seen[client.cid]
        batch = dp.sample_rate * n  # public: the update carries n
        observed = (_flat(sent.values()) - _flat(arrays[k] for k in sent)) / config.lr  # the noised gradient
        recovered = observed - regenerate(config, site, n, shapes, std, batch)
        truth = _noise_free_gradient(sim, site, sent)
        recovered_sq += float((recovered - truth).square().sum())
        sent_sq += float((observed - truth).square().sum())
        expected_sq += (std / batch) ** 2 * d
    return math.sqrt(recovered_sq / expected_sq), math.sqrt(sent_sq / expected_sq)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_regenerating_the_noise_from_public_values_recovers_nothing(attack):
    recovered, as_sent = _attack({}, ATTACKS[attack])
    # the update as sent is a noise norm away from the noise-free one (the check is calibrated) ...
    assert 0.5 <= as_sent <= 2.0
    # ... and after subtracting the regenerated noise it still is: an independent draw, about
    # sqrt(2) noise norms away (93 coordinates: outside [0.5, 2] with probability ~4e-8)
    assert 0.5 <= recovered <= 2.0


def test_the_same_attack_recovers_the_update_under_insecure_seeded_noise():
    """The control: with noise derived from the seed the attack works, so the test above could fail."""
    recovered, as_sent = _attack(SEEDED, _noise_from_seeded_generator)
    assert 0.5 <= as_sent <= 2.0
    assert recovered < 1e-9


def _batches_used(config: TrainConfig) -> dict[int, list[torch.Tensor]]:
    """Round 1's Poisson batches of each site, as its training loop drew them."""
    sim = build(config)
    sim.server.setup()
    used = {}
    for site, client in enumerate(sim.clients):
        draw = client.privacy.batches

        def keep(n, generator, site=site, draw=draw):
            used[site] = list(draw(n, generator))
            return iter(used[site])

        client.privacy.batches = keep
    sim.server.run_round(1)
    return used, sim


@pytest.mark.parametrize("seeded", [False, True], ids=["default", "insecure_seeded_noise"])
def test_replaying_the_poisson_batches_from_the_seed(seeded):
    """Which rows a step used is secret too: the attacker's replay agrees with the real batches no
    more than two independent Bernoulli(0.3) masks do (0.3^2 + 0.7^2 = 58% of row-steps), except
    under the opt-in, where it agrees on every one."""
    config = _config(SEEDED if seeded else {}, dp_sample_rate=0.3, dp_steps=5)
    with pytest.warns(InsecureNoiseWarning) if seeded else contextlib.nullcontext():
        used, sim = _batches_used(config)
    agree = total = 0
    for site, client in enumerate(sim.clients):
        n = client.num_examples
        with pytest.warns(InsecureNoiseWarning):
            replay = SiteDP(dataclasses.replace(client.privacy.dp, insecure_seeded_noise=True), n)
            g = replay.generator(config.seed, site, 1)
        for real, guess in zip(used[site], replay.batches(n, g)):
            a, b = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
            a[real], b[guess] = True, True
            agree += int((a == b).sum())
            total += n
    rate = agree / total  # about 2,300 row-steps: the rate's std is ~0.01 when independent
    if seeded:
        assert rate == 1.0
    else:
        assert 0.5 <= rate <= 0.66
