"""A curious server reads everything it is sent, and tries to read one site's model out of it.

Each attack is run against the mode that claims to defeat it and, as a control that shows the test
could fail, against a setting where the attack works (plain mode, or the sum the server is meant
to read). The server is the real one; it only records what reaches it.
"""

import struct
import warnings

import pytest
import torch

from torchhefl.federated import TrainConfig, build
from torchhefl.federated.server_key import VALUE_BITS
from torchhefl.federated.messages import decode_request, payload_of
from torchhefl.secure.refresh import MIN_MASK_BITS, serve_refresh
from torchhefl.secure import InsecureKeyWarning, wire
from torchhefl.secure.tensor import array_to_cts


def _config(**overrides) -> TrainConfig:
    base = dict(rounds=1, key_bits=512, extra={"allow_insecure_keys": True})
    base.update(overrides)
    return TrainConfig(**base)


def _recorded(cfg: TrainConfig):
    """A simulation whose transport keeps every (client, request, reply) of the run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(cfg)
    seen: list[tuple[str, bytes, bytes]] = []
    send = sim.transport.send

    def recording_send(cid: str, request: bytes) -> bytes:
        reply = send(cid, request)
        seen.append((cid, request, reply))
        return reply

    sim.transport.send = recording_send
    return sim, seen


def _fit_replies(seen):
    return [(cid, reply) for cid, _, reply in seen if decode_request(reply).kind == "fit_res"]


def _float_patterns(model: torch.nn.Module) -> set[bytes]:
    """Each trained weight of a site as it would appear in plaintext bytes (float64 and float32)."""
    out = set()
    for p in model.state_dict().values():
        for v in p.detach().reshape(-1).tolist():
            out.add(struct.pack("<d", v))
            out.add(struct.pack("<f", v))
    return out


def _weights_found_in_replies(mode: str, key_holder: str = "clients") -> list[bool]:
    """Per site: does any byte string the server received hold one of that site's trained weights?"""
    sim, seen = _recorded(_config(mode=mode, key_holder=key_holder))
    sim.server.setup()
    sim.server.run_round(1)
    replies = dict(_fit_replies(seen))
    return [any(pattern in replies[c.cid] for pattern in _float_patterns(c.model)) for c in sim.clients]


def test_plain_mode_hands_the_server_every_sites_weights():
    """The control: in plain mode the attack below reads every site's model off the wire."""
    assert _weights_found_in_replies("plain") == [True, True, True]


def test_sites_key_the_server_finds_no_weight_of_any_site_in_what_it_receives():
    assert _weights_found_in_replies("he", "clients") == [False, False, False]


@pytest.fixture(scope="module")
def hem_round():
    """One HEM round (server-held key): the simulation and everything the server received."""
    # one product per step, so that the round also refreshes (a whole round in one product needs none)
    cfg = _config(mode="he", key_holder="server", clip_norm=None, extra={"allow_insecure_keys": True, "hem_steps_per_product": 1})
    sim, seen = _recorded(cfg)
    exchange = sim.server.exchange
    close = exchange.close_round
    sim.corrections = []

    def keep(*args):  # the masks the survivors' revealed shares rebuild, as the server computed them
        close(*args)
        sim.corrections.append(list(exchange._correction))

    exchange.close_round = keep
    sim.server.setup()
    sim.server.run_round(1)
    return sim, seen


def _centred(m: int, n: int) -> int:
    """``m mod n`` lifted to ``(-n/2, n/2]``."""
    m %= n
    return m - n if m > n // 2 else m


def _signed_uploads(sim, seen) -> dict[str, list[int]]:
    """Each site's masked upload (weights, then count), decrypted alone with the server's own key."""
    exchange = sim.server.exchange
    pk, sk = exchange.public_key, exchange._private_key
    d, n = exchange.theta.numel(), int(pk.n)
    out = {}
    for cid, reply in _fit_replies(seen):
        msg = wire.decode(payload_of(decode_request(reply)))
        cts = array_to_cts(msg.arrays["weights"], pk, d) + array_to_cts(msg.arrays["count"], pk, 1)
        out[cid] = [_centred(int(sk.decrypt_raw(c)), n) for c in cts]
    return out


def test_server_key_one_sites_upload_decrypts_to_noise_the_sum_to_the_model(hem_round):
    """The server holds the private key and decrypts each site's upload on its own: every value is
    uniform in Z_n (|v| near n/4), where the true ``n_k * theta_k`` at the upload scale 2^64 is below 2^112.
    The control: the same decryption of the product of all uploads, less the masks the survivors'
    revealed shares rebuild (every site's self-mask), gives the sum, which is small and is the
    model the server aggregated."""
    sim, seen = hem_round
    bits = sim.server.exchange.public_key.bits
    uploads = _signed_uploads(sim, seen)
    assert len(uploads) == 3
    true_bound = 1 << (sim.server.exchange.upload_scale + VALUE_BITS + 32)
    for values in uploads.values():
        assert min(abs(v) for v in values) > 1 << (bits - 40)
    n = int(sim.server.exchange.public_key.n)
    (correction,) = sim.corrections
    sums = [_centred(sum(col) - m, n) for col, m in zip(zip(*uploads.values()), correction)]
    assert all(abs(s) < true_bound for s in sums)
    count = sums[-1]
    assert count == sum(c.num_examples for c in sim.clients)
    theta = torch.tensor([s / (1 << sim.server.exchange.upload_scale) for s in sums[:-1]], dtype=torch.float64) / count
    assert torch.allclose(theta, sim.server.exchange.theta, atol=1e-9)


def test_server_key_a_blinded_refresh_shows_the_server_only_the_mask(hem_round):
    """Every value the server decrypts while serving a refresh is the site's value plus a mask far
    wider than the public bound on that value, so it is no closer to the value than a random draw."""
    sim, seen = hem_round
    sk = sim.server.exchange._private_key
    requests = [reply for _, _, reply in seen if decode_request(reply).kind == "refresh_req"]
    assert requests, "a HEM round of one product per step refreshes at least once"
    for reply in requests:
        inner = payload_of(decode_request(reply))
        _, values = serve_refresh(inner, sk)
        blinded = wire.decode(payload_of(decode_request(inner)))
        scale = blinded.meta["scale"]
        # the value itself is below 2^(scale + VALUE_BITS); the mask is MIN_MASK_BITS (128) wider
        assert min(abs(v) for v in values) > 1 << (scale + VALUE_BITS + MIN_MASK_BITS // 2)
