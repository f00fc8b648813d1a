"""--he-resolution / --he-rounding: the sites' uploads in a coarser packed encoding.

Each site rounds its model to the resolution ``2^-s`` before encrypting (the weight multiplies
the rounded integer), and the sum is exact; so one aggregation is the FedAvg of the rounded models,
within ``2^-(s+1)`` of the plaintext FedAvg with rounding to nearest (a weighted mean of errors each
at most half a step) and within ``2^-s`` with stochastic rounding. A whole run equals the plaintext
run whose uploads (and initial model) are rounded identically.
"""

import dataclasses
from collections import OrderedDict

import pytest
import torch

from torchhefl.exceptions import ConfigError, MalformedMessageError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.clients_key import (
    ClientKeyClientExchange,
    ClientKeyServerExchange,
    simulated_identity,
    upload_encoding,
)
from torchhefl.federated.exchange import PlainClientExchange
from torchhefl.federated.strategies import get_strategy
from torchhefl.secure import STATE_DICT_FIXED_POINT, generate_keypair, packing
from torchhefl.secure.identity import Roster

SITES = 3


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512, allow_insecure=True)


def _quantised(state, scale_bits: int) -> OrderedDict:
    step = 2.0**scale_bits
    return OrderedDict((k, (torch.round(v.double() * step) / step).to(v.dtype)) for k, v in state.items())


def _exchanges(keypair, initial, config: TrainConfig):
    """The server's and the sites' exchanges of ``config``'s encoding, with identities and roster."""
    pk, sk = keypair
    enc = upload_encoding(config)
    server = ClientKeyServerExchange(pk, initial, weight_bound=enc.weight_bound, precision=enc.precision)
    sites = [
        ClientKeyClientExchange(sk, weight_bound=enc.weight_bound, precision=enc.precision, rounding=enc.rounding)
        for _ in range(config.clients)
    ]
    identities = [simulated_identity(sk, f"site{i}") for i in range(config.clients)]
    roster = Roster.of(identities)
    for site, identity in zip(sites, identities):
        site.set_identity(identity, roster)
        site.set_initial_state(initial)
    server.set_roster(roster)
    return server, sites


def _one_round(keypair, states, counts, config: TrainConfig) -> tuple[OrderedDict, list[bytes]]:
    """One aggregation through the real exchanges: the global model a site reads, and the uploads."""
    initial = OrderedDict((k, torch.zeros_like(v)) for k, v in states[0].items())
    server, sites = _exchanges(keypair, initial, config)
    uploads = [
        site.write_update_for(state, n, server_round=1, attempt=1) for site, state, n in zip(sites, states, counts)
    ]
    checked = [server.check_update(u, server_round=1, attempt=1) for u in uploads]
    server.aggregate(checked, get_strategy("fedavg"))
    return sites[0].read_global_after(server.global_payload(), 1), uploads


def _states(n_values: int = 200, seed: int = 0) -> list[OrderedDict]:
    g = torch.Generator().manual_seed(seed)
    return [
        OrderedDict(weight=torch.randn(1, n_values - 1, generator=g) * 3, bias=torch.randn(1, generator=g))
        for _ in range(SITES)
    ]


def _fedavg(states, counts) -> OrderedDict:
    total = sum(counts)
    return OrderedDict((k, sum(n * s[k].double() for s, n in zip(states, counts)) / total) for k in states[0])


@pytest.mark.parametrize("resolution", [1e-6, 1e-3, 1e-2, 0.5])
def test_one_aggregation_is_the_fedavg_of_the_rounded_models_within_half_a_step(keypair, resolution):
    config = TrainConfig(clients=SITES, he_resolution=resolution)
    s = upload_encoding(config).precision.scale_bits
    assert 2.0**-s <= resolution < 2.0 ** -(s - 1)  # the coarsest power of two at most the resolution
    states, counts = _states(), [100, 137, 174]
    got, _ = _one_round(keypair, states, counts, config)
    rounded = _fedavg([_quantised(st, s) for st in states], counts)
    plain = _fedavg(states, counts)
    for k in plain:
        # exactly the FedAvg of the rounded models (up to float32)
        torch.testing.assert_close(got[k].double(), rounded[k].to(torch.float32).double(), rtol=0, atol=0)
        err = (got[k].double() - plain[k]).abs().max().item()
        assert err <= 2.0 ** -(s + 1) + 1e-6 * float(plain[k].abs().max()), (k, err, 2.0 ** -(s + 1))
        if resolution >= 1e-3:  # and the rounding shows: the bound is not vacuous
            assert err > 2.0 ** -(s + 3)


def test_stochastic_rounding_errs_by_less_than_a_step_and_is_unbiased(keypair):
    config = TrainConfig(clients=SITES, he_resolution=2.0**-4, he_rounding="stochastic")
    states, counts = _states(4000, seed=1), [100, 137, 174]
    got, _ = _one_round(keypair, states, counts, config)
    plain = _fedavg(states, counts)
    errors = torch.cat([(got[k].double() - plain[k]).reshape(-1) for k in plain])
    assert errors.abs().max().item() < 2.0**-4 + 1e-6
    # unbiased: the mean error is within 5 standard errors of 0
    assert abs(errors.mean().item()) < 5 * errors.std().item() / len(errors) ** 0.5
    nearest, _ = _one_round(keypair, states, counts, dataclasses.replace(config, he_rounding="nearest"))
    assert any(not torch.equal(nearest[k], got[k]) for k in got)


def test_bytes_up_shrink_as_slots_grow(keypair):
    states, counts = _states(2000), [100, 137, 174]
    sizes, slots = [], []
    for resolution in (None, 1e-4, 1e-2, 0.5):  # 8, 9, 11, 13 slots of a 512-bit key
        config = TrainConfig(clients=SITES, he_resolution=resolution)
        fp = upload_encoding(config).precision
        _, uploads = _one_round(keypair, states, counts, config)
        sizes.append(len(uploads[0]))
        slots.append(packing.slots_per_plaintext(keypair[0].bits, fp.slot_bits))
    assert slots == sorted(slots) and len(set(slots)) == len(slots), slots
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes), sizes
    # the ciphertexts are the whole difference: one 2 * 512-bit ciphertext less per plaintext saved
    cts = [-(-2001 // k) for k in slots]
    assert [a - b for a, b in zip(sizes, sizes[1:])] == [(a - b) * 128 for a, b in zip(cts, cts[1:])]


def test_the_default_is_the_default_encoding():
    assert upload_encoding(TrainConfig()).precision == STATE_DICT_FIXED_POINT
    assert upload_encoding(TrainConfig(he_resolution=2.0**-24)).precision == STATE_DICT_FIXED_POINT
    enc = upload_encoding(TrainConfig(clients=4, he_resolution=1e-2, he_rounding="stochastic"))
    assert (enc.precision.scale_bits, enc.precision.value_bits, enc.rounding) == (7, 13, "stochastic")
    assert enc.precision.max_total_weight >= 4 * enc.weight_bound  # room for every site at its cap


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(he_resolution=0.0), r"--he-resolution must be a number in \(0, 1\], got 0.0"),
        (dict(he_resolution=float("nan")), r"--he-resolution must be a number in \(0, 1\], got nan"),
        (dict(he_resolution="1e-3"), r"--he-resolution must be a number in \(0, 1\], got '1e-3'"),
        (dict(he_rounding="up"), "--he-rounding must be one of nearest, stochastic; got 'up'"),
        (dict(he_resolution=1e-9), r"a slot has at most 63 bits, \|w\| < 8192 takes 14 and the total weight of 3 sites "
                                   r"\(up to 16777215\) 24, leaving 25 after the binary point: give at least 2\^-25"),
        (dict(he_resolution=1e-3, mode="plain"), "only --mode he --key-holder clients has; leave them out of a plain run"),
        (dict(he_rounding="stochastic", mode="he", key_holder="server", clip_norm=None), "leave them out of a he-server run"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        TrainConfig(**overrides).validate()
    assert "\n" not in str(e.value)


def test_the_finest_resolution_a_slot_holds_is_accepted():
    TrainConfig(he_resolution=2.0**-25).validate()
    with pytest.raises(ConfigError, match="give at least 2\\^-25"):
        TrainConfig(he_resolution=2.0**-25 * 0.99).validate()


class _RoundingPlainExchange(PlainClientExchange):
    """A plaintext site that rounds its upload as an encrypting site at ``scale_bits`` does."""

    def __init__(self, scale_bits: int) -> None:
        super().__init__()
        self.scale_bits = scale_bits

    def write_update(self, state, num_examples):
        return super().write_update(_quantised(state, self.scale_bits), num_examples)


def _train(sim, rounds):
    sim.server.setup()
    results = [sim.server.run_round(r) for r in range(1, rounds + 1)]
    return sim.final_state(), results


@pytest.mark.parametrize("resolution", [1e-2, 0.25])
def test_a_coarse_run_equals_the_plain_run_rounded_identically(small_config, resolution):
    he_config = small_config(mode="he", key_holder="clients", rounds=4, he_resolution=resolution)
    s = upload_encoding(he_config).precision.scale_bits
    he, he_results = _train(build(he_config), 4)

    plain = build(small_config(mode="plain", rounds=4))
    for client in plain.clients:
        client.exchange = _RoundingPlainExchange(s)
    # the encrypted run starts from the initial model as its encoding holds it
    plain.server.exchange.state = _quantised(plain.server.exchange.state, s)
    rounded, plain_results = _train(plain, 4)
    for k in rounded:
        torch.testing.assert_close(he[k], rounded[k], rtol=0, atol=1e-6)
    for h, p in zip(he_results, plain_results):
        assert h["test_accuracy"] == p["test_accuracy"]

    # and the unrounded plain run differs, by no more than the rounding can account for
    exact, _ = _train(build(small_config(mode="plain", rounds=4)), 4)
    diff = max((he[k] - exact[k]).abs().max().item() for k in exact)
    assert 0 < diff, diff
    # 5 roundings (the initial model's and 4 aggregations'), each within half a step; local SGD on
    # this loss does not amplify a perturbation of the global model (measured: 1.6-1.8 half steps)
    assert diff < 5 * 2.0 ** -(s + 1), (diff, 2.0 ** -(s + 1))


def test_a_site_refuses_a_global_model_in_another_encoding(keypair):
    states, counts = _states(40), [100, 137, 174]
    initial = OrderedDict((k, torch.zeros_like(v)) for k, v in states[0].items())
    agreed = TrainConfig(clients=SITES, he_resolution=1e-2)
    server, _ = _exchanges(keypair, initial, TrainConfig(clients=SITES))  # the server packs at the default
    _, sites = _exchanges(keypair, initial, agreed)
    with pytest.raises(MalformedMessageError, match="unsupported encoding parameters"):
        sites[0].read_global_after(server.global_payload(), 0)
    _, same = _exchanges(keypair, initial, TrainConfig(clients=SITES))  # the control: sites in the server's encoding
    assert same[0].read_global_after(server.global_payload(), 0).keys() == initial.keys()
