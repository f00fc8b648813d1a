"""--mode he --key-holder clients: the same training as plain mode, with a server that cannot read."""

import dataclasses
import gc
import hashlib

import numpy as np
import pytest
import torch

from torchhefl.exceptions import ConfigError, KeyMismatchError, MalformedMessageError, ProtocolError
from torchhefl.federated import build
from torchhefl.federated.clients_key import ClientKeyClientExchange, ClientKeyServerExchange, simulated_identity
from torchhefl.federated.messages import decode_request, encode_request, payload_of
from torchhefl.federated.signed_uploads import SignedGlobal, SignedUpload
from torchhefl.federated.simulation import make_model
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


# -- signed uploads -------------------------------------------------------------------------------
def _round_1(small_config, **overrides):
    """A run after round 1, with every site's round-1 upload kept: ``(sim, {cid: checked upload})``."""
    sim = build(small_config(mode="he", key_holder="clients", **overrides))
    sim.server.setup()
    exchange = sim.server.exchange
    kept = {}
    honest = exchange.aggregate

    def keeping(payloads, strategy):
        kept.update({u.signature.cid: u for u in payloads})
        honest(payloads, strategy)

    exchange.aggregate = keeping
    sim.server.run_round(1)
    return sim, kept


def test_uploads_are_signed_for_their_round_and_the_sum_lists_them(small_config):
    sim, kept = _round_1(small_config)
    roster = sim.clients[0].exchange.roster
    signed = SignedGlobal.from_bytes(sim.server.exchange.global_payload())
    model = SecureStateDict.from_bytes(signed.model, public_key=sim.server.exchange.public_key)
    assert [u.cid for u in signed.uploads] == ["site0", "site1", "site2"] == sorted(kept)
    for u in signed.uploads:
        assert (u.round, u.attempt) == (1, 1) and u == kept[u.cid].signature
        assert kept[u.cid].model.coins == [(u.nonce, 1)]
        assert u.digest == hashlib.sha256(kept[u.cid].model.to_bytes()).digest()
        u.verify(roster)
    # the sum's coin list is the uploads' nonces, weight 1 each: the sites weighted their own uploads
    assert sorted(model.coins) == sorted((u.nonce, 1) for u in signed.uploads)
    # a signature is over this round, attempt, nonce, digest and roster: change any and it fails
    u = signed.uploads[0]
    for changed in (dataclasses.replace(u, round=2), dataclasses.replace(u, attempt=2), dataclasses.replace(u, nonce=bytes(16)),
                    dataclasses.replace(u, digest=bytes(32)), dataclasses.replace(u, cid="site1")):
        with pytest.raises(ProtocolError, match="does not carry its signature"):
            changed.verify(roster)


def _refusal(sim, blob: bytes, after_round: int = 1) -> str:
    with pytest.raises(ProtocolError) as e:
        sim.clients[2].exchange.read_global_after(blob, after_round)
    return str(e.value)


def test_a_site_checks_each_listed_upload(small_config):
    sim, kept = _round_1(small_config)
    payload = sim.server.exchange.global_payload()
    signed = SignedGlobal.from_bytes(payload)
    assert sim.clients[2].exchange.read_global_after(payload, 1).keys() == sim.final_state().keys()
    a, b, c = signed.uploads
    twice = SignedGlobal(signed.model, (a, b, a))
    assert "it lists site0's upload twice" in _refusal(sim, twice.to_bytes())
    mixed = SignedGlobal(signed.model, (a, b, dataclasses.replace(c, attempt=2)))
    assert "does not carry its signature" in _refusal(sim, mixed.to_bytes())
    assert _refusal(sim, payload, after_round=2).endswith("the upload it lists for site0 is signed for round 1")
    stranger = dataclasses.replace(c, cid="site9")
    assert "site 'site9' is not on the roster" in _refusal(sim, SignedGlobal(signed.model, (a, b, stranger)).to_bytes())
    # two of three listed, the header left as it is: the sum's weight bound gives it away
    assert "claims a weight bound of" in _refusal(sim, SignedGlobal(signed.model, (a, b)).to_bytes())
    # a site with no roster can check nothing, and so accepts nothing
    ex = sim.clients[2].exchange
    bare = ClientKeyClientExchange(ex.private_key, weight_bound=ex.weight_bound)
    with pytest.raises(ProtocolError, match="this site has no roster to check the global model's signatures against"):
        bare.read_global_after(payload, 1)


def test_a_site_refuses_uploads_of_two_attempts(small_config):
    """Signed uploads of one round but of different attempts are never summed by an honest server."""
    sim, kept = _round_1(small_config)
    exchange, site = sim.server.exchange, sim.clients[0]
    # site0 answers round 1 again, as in a retried attempt
    site.last_round = (0, 0)
    initial_state = make_model(sim.config, sim.dataset.num_features).state_dict()
    initial = SignedGlobal(SecureStateDict.encrypt(initial_state, exchange.public_key, public=True).to_bytes()).to_bytes()
    request = encode_request("fit_ins", {"round": 1, "attempt": 2, "participants": ["site0"], "config": {}}, initial)
    again = exchange.check_update(payload_of(decode_request(site.handle(request))), server_round=1, attempt=2)
    exchange.aggregate([again, kept["site1"], kept["site2"]], sim.server.strategy)
    assert "its uploads answer different attempts of round 1" in _refusal(sim, exchange.global_payload())


def test_the_server_sums_no_fewer_uploads_than_the_sites_accept(small_config):
    sim, kept = _round_1(small_config)
    with pytest.raises(ProtocolError, match=r"1 signed upload\(s\) to combine: the sites accept no global model of fewer than 2"):
        sim.server.exchange.aggregate([kept["site0"]], sim.server.strategy)
    with pytest.raises(ProtocolError, match="more than one upload signed by site0"):
        sim.server.exchange.aggregate([kept["site0"], kept["site0"]], sim.server.strategy)


def test_the_server_checks_the_upload_it_is_sent(small_config):
    sim, kept = _round_1(small_config)
    exchange = sim.server.exchange
    upload = SignedUpload(kept["site1"].signature, kept["site1"].model.to_bytes()).to_bytes()
    assert exchange.check_update(upload, server_round=1, attempt=1, participants=["site1"]).signature.cid == "site1"
    with pytest.raises(MalformedMessageError, match="signed by site1, who was not asked to train"):
        exchange.check_update(upload, server_round=1, attempt=1, participants=["site0", "site2"])
    with pytest.raises(MalformedMessageError, match="update signed for round 1 attempt 1, expected round 2 attempt 1"):
        exchange.check_update(upload, server_round=2, attempt=1)
    other = SignedUpload(kept["site1"].signature, kept["site0"].model.to_bytes()).to_bytes()
    with pytest.raises(MalformedMessageError, match="the update's coins are not the one nonce its signature names"):
        exchange.check_update(other)


def test_a_site_without_an_identity_does_not_upload(small_config):
    sim = build(small_config(mode="he", key_holder="clients"))
    site = sim.clients[0].exchange
    site.identity = None
    with pytest.raises(ProtocolError, match="no signing identity and roster"):
        site.write_update_for(sim.clients[0].model.state_dict(), 10, server_round=1, attempt=1)


def test_simulated_identities_are_the_sites_key_s_and_survive_a_rebuild(small_config):
    sim = build(small_config(mode="he", key_holder="clients"))
    key = sim.clients[0].exchange.private_key
    again = simulated_identity(key, "site1")
    assert again.public_bytes() == sim.clients[1].exchange.identity.public_bytes()
    assert again.public_bytes() != simulated_identity(key, "site2").public_bytes()
    _, stranger = generate_keypair(512, allow_insecure=True)
    assert simulated_identity(stranger, "site1").public_bytes() != again.public_bytes()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(clients=1), "needs at least 2 sites"),
        (dict(clients=3, fraction=0.3), r"--fraction 0.3 asks 1 of the 3 sites per round, but .* at least 2"),
        (dict(clients=5, fraction=0.4), r"asks 2 of the 5 sites per round, but .* at least 3"),
    ],
)
def test_a_round_must_ask_enough_sites_for_the_sum_to_be_accepted(small_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        small_config(mode="he", key_holder="clients", **overrides).validate()
    small_config(mode="he", key_holder="clients", clients=5, fraction=0.4, min_clients=3).validate()


def test_an_evaluation_request_says_which_round_it_is(small_config):
    sim = build(small_config(mode="he", key_holder="clients"))
    sim.server.setup()
    payload = sim.server.exchange.global_payload()
    for meta in ({}, {"round": -1}, {"round": True}, {"round": 1.0}):
        with pytest.raises(MalformedMessageError, match="evaluation request with an invalid round"):
            sim.clients[0].handle(encode_request("evaluate_ins", meta, payload))
    # round 0: the initial model, which is what the server holds before any round
    assert sim.clients[0].handle(encode_request("evaluate_ins", {"round": 0}, payload))
    with pytest.raises(ProtocolError, match="refuses the server's global model after round 1: it sums 0 signed upload"):
        sim.clients[0].handle(encode_request("evaluate_ins", {"round": 1}, payload))
