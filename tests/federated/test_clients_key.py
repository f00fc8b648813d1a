"""--mode he --key-holder clients: the same training as plain mode, with a server that cannot read."""

import gc

import numpy as np
import pytest
import torch

from torchhefl.exceptions import KeyMismatchError
from torchhefl.federated import build
from torchhefl.federated.clients_key import ClientKeyServerExchange
from torchhefl.federated.signed_uploads import SignedGlobal
from torchhefl.secure import PrivateKey, SecureStateDict, generate_keypair


def _train(cfg):
    sim = build(cfg)
    sim.server.setup()
    results = [sim.server.run_round(r) for r in range(1, cfg.rounds + 1)]
    return sim, results


def _reachable(root, depth=6):
    """Every object reachable from ``root`` through attributes, containers and closures."""
    seen, todo, out = set(), [(root, 0)], []
    while todo:
        obj, d = todo.pop()
        if id(obj) in seen or d > depth or isinstance(obj, (str, bytes, int, float, type)):
            continue
        seen.add(id(obj))
        out.append(obj)
        todo.extend((r, d + 1) for r in gc.get_referents(obj))
    return out


@pytest.mark.parametrize("loss", ["taylor", "bce"])
def test_he_clients_matches_plain(small_config, loss):
    plain, plain_results = _train(small_config(mode="plain", loss=loss))
    he, he_results = _train(small_config(mode="he", key_holder="clients", loss=loss))
    a, b = plain.final_state(), he.final_state()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    # same held-out rows, same predictions, so the same test metrics
    for p, h in zip(plain_results, he_results):
        assert p["test_accuracy"] == h["test_accuracy"]
        assert p["test_auc"] == pytest.approx(h["test_auc"], abs=1e-9)
        assert p["test_loss"] == pytest.approx(h["test_loss"], abs=1e-6)


def test_server_never_holds_a_private_key(small_config):
    sim, _ = _train(small_config(mode="he", key_holder="clients", rounds=1))
    server_side = _reachable(sim.server.exchange) + _reachable(sim.server.strategy)
    assert not any(isinstance(o, PrivateKey) for o in server_side)
    assert any(isinstance(o, PrivateKey) for o in _reachable(sim.clients[0].exchange))
    assert sim.server.global_state() is None


def test_server_cannot_decrypt_what_it_relays(small_config):
    sim, _ = _train(small_config(mode="he", key_holder="clients", rounds=1))
    blob = sim.server.exchange.global_payload()
    agg = SecureStateDict.from_bytes(SignedGlobal.from_bytes(blob).model, public_key=sim.server.exchange.public_key)
    _, stranger = generate_keypair(512, allow_insecure=True)
    with pytest.raises(KeyMismatchError):
        agg.decrypt(stranger)
    # the payload holds ciphertexts, not the weights: no weight value appears in its bytes
    weights = sim.final_state()["weight"].numpy().astype(np.float64).tobytes()
    assert weights[:8] not in blob
    # and a site's key does decrypt it to the model the run produced
    state = agg.decrypt(sim.clients[0].exchange.private_key)
    assert torch.allclose(state["weight"], sim.final_state()["weight"])


def test_updates_hide_counts_and_weights(small_config):
    """The server sees neither a site's sample count nor its weights in a fit reply."""
    sim = build(small_config(mode="he", key_holder="clients", rounds=1))
    sim.server.setup()
    from torchhefl.federated.messages import decode_request, encode_request, payload_of

    req = encode_request(
        "fit_ins", {"round": 1, "attempt": 1, "participants": ["site0"], "config": {}}, sim.server.exchange.global_payload()
    )
    reply = decode_request(sim.transport.send("site0", req))
    assert "num_examples" not in reply.meta
    update = sim.server.exchange.check_update(payload_of(reply)).model
    assert update.weight_bound > sim.clients[0].num_examples  # only a public cap is visible
    assert update.decrypt_weight(sim.clients[0].exchange.private_key) == sim.clients[0].num_examples


def test_statistics_travel_encrypted(small_config):
    sim = build(small_config(mode="he", key_holder="clients", rounds=1))
    sim.server.setup()
    assert sim.server.standardizer is None  # the server could not read the summed moments
    ref = build(small_config(mode="plain", rounds=1))
    ref.server.setup()
    np.testing.assert_allclose(sim.clients[1].standardizer.mean, ref.server.standardizer.mean, rtol=1e-9)
    np.testing.assert_allclose(sim.clients[1].standardizer.scale, ref.server.standardizer.scale, rtol=1e-9)


def test_server_rejects_update_under_another_key(small_config):
    sim = build(small_config(mode="he", key_holder="clients", rounds=1))
    other_pk, _ = generate_keypair(512, allow_insecure=True)
    state = sim.final_state()
    blob = SecureStateDict.encrypt(state, other_pk).to_bytes()
    with pytest.raises(KeyMismatchError):
        sim.server.exchange.read_update(blob)
    assert isinstance(sim.server.exchange, ClientKeyServerExchange)
