"""A server that chooses the global model the sites evaluate or train on (``--key-holder clients``).

The server holds the sites' public key, so it can encrypt any model it likes: with ``e_7`` (weight 1
on feature 7, 0 elsewhere) a site's evaluation histograms are the histogram of ``sigmoid(x_7)``
over its held-out rows, per label, which reads out feature 7 of every row to within a bin. It could
also forward one site's upload as the global model, pass a past round's sum off as this round's, or
drop signatures. Sites sign their uploads, the global model lists the signed uploads it sums, and a
site decrypts a global model only if it is the sum of signed uploads of a strict majority of the
roster for that round, over exactly their coins; round 1's model must be the agreed initial one.

The malicious server is the real :class:`Server` whose :class:`ClientKeyServerExchange` has one
behaviour changed: after summing round 2's uploads honestly it replaces the sum with a forgery
(through its public ``restore_global``). Each forgery must leave every site refusing with a
:class:`ProtocolError` that says why, and answering no histogram (round 2's evaluation) and no
loss (round 3's fit). The controls: without the check, the e_7 forgery does read out feature 7;
and the honest run still trains plain mode's model.
"""

import dataclasses
import re

import numpy as np
import pytest
import torch

from torchhefl.exceptions import ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.clients_key import ClientKeyClientExchange
from torchhefl.federated.evaluation import AUC_BINS, counts_from_wire
from torchhefl.federated.messages import decode_request, decode_state, payload_of
from torchhefl.federated.signed_uploads import SignedGlobal
from torchhefl.secure import SecureStateDict, wire

FEATURE = 7


def _config(**overrides) -> TrainConfig:
    base = dict(mode="he", key_holder="clients", rounds=3, clients=3, key_bits=512, extra={"allow_insecure_keys": True})
    return TrainConfig(**{**base, **overrides})


class Witness:
    """A real site, with what it answered and what it refused recorded: ``(request kind, round, reply or reason)``."""

    def __init__(self, client) -> None:
        self.client = client
        self.replies: list[tuple[str, int, object]] = []
        self.refusals: list[tuple[str, int, str]] = []

    def handle(self, request: bytes) -> bytes:
        msg = decode_request(request)
        try:
            reply = self.client.handle(request)
        except ProtocolError as e:
            self.refusals.append((msg.kind, msg.meta.get("round"), str(e)))
            raise
        self.replies.append((msg.kind, msg.meta.get("round"), decode_request(reply)))
        return reply


def _federation(**overrides):
    sim = build(_config(**overrides))
    witnesses = [Witness(c) for c in sim.clients]
    for w in witnesses:
        sim.transport.clients[w.client.cid] = w
    return sim, witnesses


def _e7(sim) -> dict[str, torch.Tensor]:
    """The chosen model: the logit is feature 7 of the (standardised) row."""
    weight = torch.zeros_like(sim.clients[0].model.weight.detach())
    weight[0, FEATURE] = 1.0
    return {"weight": weight, "bias": torch.zeros(1, dtype=weight.dtype)}


def _with_header(model: bytes, **fields) -> bytes:
    """SecureStateDict bytes with header fields rewritten (what a forger claims about its ciphertexts)."""
    msg = wire.decode(model)
    return wire.encode(msg.kind, {**msg.meta, **fields}, msg.arrays)


def _header(model: bytes) -> dict:
    return wire.decode(model).meta


# -- the forgeries: (exchange, the global after round 1, the honest sum of round 2, its checked uploads) -> bytes
def chosen_model(exchange, previous, honest, uploads):
    """e_7 under the sites' key, claiming the honest sum's coin list, weight bound and signatures."""
    signed = SignedGlobal.from_bytes(honest)
    head = _header(signed.model)
    forged = SecureStateDict.encrypt(_e7(exchange.sim), exchange.public_key, weight_bound=head["weight_bound"]).to_bytes()
    return SignedGlobal(_with_header(forged, coins=head["coins"]), signed.uploads).to_bytes()


def chosen_public_model(exchange, previous, honest, uploads):
    """e_7 with no random factor at all (how the initial model travels), with the honest signatures."""
    signed = SignedGlobal.from_bytes(honest)
    weight_bound = _header(signed.model)["weight_bound"]
    forged = SecureStateDict.encrypt(_e7(exchange.sim), exchange.public_key, weight_bound=weight_bound, public=True)
    return SignedGlobal(forged.to_bytes(), signed.uploads).to_bytes()


def one_upload(exchange, previous, honest, uploads):
    """site0's upload forwarded as the global model, with its own signature."""
    return SignedGlobal(uploads[0].model.to_bytes(), (uploads[0].signature,)).to_bytes()


def one_upload_as_the_sum(exchange, previous, honest, uploads):
    """site0's upload, claiming the honest sum's coin list, weight bound and every signature."""
    signed = SignedGlobal.from_bytes(honest)
    head = _header(signed.model)
    model = _with_header(uploads[0].model.to_bytes(), coins=head["coins"], weight_bound=head["weight_bound"])
    return SignedGlobal(model, signed.uploads).to_bytes()


def previous_round(exchange, previous, honest, uploads):
    """The sum of round 1 sent again as the model after round 2."""
    return previous


def previous_round_relabelled(exchange, previous, honest, uploads):
    """The sum of round 1 with its upload records relabelled round 2."""
    signed = SignedGlobal.from_bytes(previous)
    return SignedGlobal(signed.model, tuple(dataclasses.replace(u, round=2) for u in signed.uploads)).to_bytes()


def below_threshold(exchange, previous, honest, uploads):
    """The honest sum listing one signature."""
    signed = SignedGlobal.from_bytes(honest)
    return SignedGlobal(signed.model, signed.uploads[:1]).to_bytes()


def one_signature_dropped(exchange, previous, honest, uploads):
    """The honest sum of three listing two signatures (the threshold), its header rewritten to match them."""
    signed = SignedGlobal.from_bytes(honest)
    kept = signed.uploads[:2]
    per_site = _header(signed.model)["weight_bound"] // 3
    model = _with_header(signed.model, coins=[[u.nonce.hex(), 1] for u in kept], weight_bound=2 * per_site)
    return SignedGlobal(model, kept).to_bytes()


FORGERIES = {
    "(a) e_7 under the sites' key": (chosen_model, "its ciphertexts are not the sum of the uploads it lists"),
    "(a) e_7 as a public encryption": (chosen_public_model, "its ciphertexts are not the sum of the uploads it lists"),
    "(b) one site's upload": (one_upload, r"it sums 1 signed upload\(s\), fewer than the 2 of the 3 sites' a global model needs"),
    "(b) one site's upload as the sum": (one_upload_as_the_sum, "its ciphertexts are not the sum of the uploads it lists"),
    "(c) round 1's sum as round 2's": (previous_round, "the upload it lists for site0 is signed for round 1"),
    "(c) round 1's sum relabelled": (previous_round_relabelled, "for site 'site0' does not carry its signature"),
    "(d) below the threshold": (below_threshold, r"it sums 1 signed upload\(s\), fewer than the 2 of the 3 sites'"),
    "(d) a signature dropped": (one_signature_dropped, "its ciphertexts are not the sum of the uploads it lists"),
}


def _forge_after_round_1(sim, forge) -> None:
    """The one behaviour changed: from round 2 on, the exchange's sum is replaced by ``forge``'s."""
    exchange = sim.server.exchange
    exchange.sim = sim  # what the forger knows: the public settings, hence the model's shapes
    honest_aggregate = exchange.aggregate

    def aggregate(payloads, strategy):
        previous = exchange.global_payload()
        honest_aggregate(payloads, strategy)
        exchange.restore_global(forge(exchange, previous, exchange.global_payload(), list(payloads)))

    exchange.aggregate = aggregate


def _answers_after(witnesses, kind: str, rnd: int) -> list:
    return [r for w in witnesses for k, n, r in w.replies if k == kind and n >= rnd]


@pytest.mark.parametrize("name", list(FORGERIES))
def test_sites_refuse_a_forged_global_model(name):
    forge, reason = FORGERIES[name]
    sim, witnesses = _federation()
    sim.server.setup()
    honest = sim.server.run_round(1)
    assert honest["clients"] == ["site0", "site1", "site2"]
    _forge_after_round_1(sim, forge)
    with pytest.raises(ProtocolError, match="no client could evaluate the model"):
        sim.server.run_round(2)  # the sites train on round 1's honest sum, then refuse the forgery
    with pytest.raises(ProtocolError, match="round 3: only 0 of 3 clients answered"):
        sim.server.run_round(3)
    assert _answers_after(witnesses, "evaluate_ins", 2) == []  # no histogram
    assert _answers_after(witnesses, "fit_ins", 3) == []  # no loss, no update
    for w in witnesses:
        kinds = {(kind, rnd) for kind, rnd, _ in w.refusals}
        assert kinds == {("evaluate_ins", 2), ("fit_ins", 3)}, w.refusals
        for _, _, why in w.refusals:
            assert why.startswith(f"{w.client.cid} refuses the server's global model after round 2: "), why
            assert re.search(reason, why), why


@pytest.mark.parametrize("public", [True, False], ids=["public", "with random factors"])
def test_sites_refuse_a_chosen_initial_model(public):
    """Round 1's model is the initial model every party draws from the seed: e_7 in its place is refused."""
    sim, witnesses = _federation()
    exchange = sim.server.exchange
    forged = SecureStateDict.encrypt(_e7(sim), exchange.public_key, public=public)
    exchange.restore_global(SignedGlobal(forged.to_bytes()).to_bytes())
    sim.server.setup()
    with pytest.raises(ProtocolError, match="round 1: only 0 of 3 clients answered"):
        sim.server.run_round(1)
    assert _answers_after(witnesses, "fit_ins", 1) == []
    for w in witnesses:
        assert w.refusals and all(
            why == f"{w.client.cid} refuses the server's initial model: it is not the initial model every party draws "
            "from the run's seed"
            for _, _, why in w.refusals
        ), w.refusals


def _unchecked(self, payload: bytes, after_round: int):
    """What a site did before the check: decrypt whatever arrives."""
    return SecureStateDict.from_bytes(SignedGlobal.from_bytes(payload).model, public_key=self.public_key).decrypt(self.private_key)


def test_without_the_check_a_chosen_model_reads_out_feature_7(monkeypatch):
    """The control: a site that decrypts whatever arrives answers e_7's evaluation with the histogram
    of ``sigmoid(x_7)`` over its held-out rows, per label: feature 7 of every row, to within a bin."""
    monkeypatch.setattr(ClientKeyClientExchange, "read_global_after", _unchecked)
    sim, witnesses = _federation()
    sim.server.setup()
    sim.server.run_round(1)
    _forge_after_round_1(sim, chosen_model)
    sim.server.run_round(2)
    for w in witnesses:
        [reply] = [r for k, n, r in w.replies if k == "evaluate_ins" and n == 2]
        counts = counts_from_wire({k: v.numpy() for k, v in decode_state(payload_of(reply))[0].items()})
        client = w.client
        x7 = client.X_test[:, FEATURE].numpy()
        bins = np.clip(1 / (1 + np.exp(-x7)) * AUC_BINS, 0, AUC_BINS - 1).astype(np.int64)
        labels = client.y_test.numpy().astype(bool)
        assert np.array_equal(counts["pos_hist"], np.bincount(bins[labels], minlength=AUC_BINS))
        assert np.array_equal(counts["neg_hist"], np.bincount(bins[~labels], minlength=AUC_BINS))
        assert len(np.unique(bins)) > 0.8 * len(bins)  # nearly one bin per row: the values themselves


def test_the_honest_server_still_trains_plain_modes_model():
    """The control: with an honest server the sites accept every model, and train plain mode's model
    (to 1e-6, the tolerance of ``tests/federated/test_clients_key.py``)."""
    results = {}
    for mode in ("plain", "he"):
        sim, witnesses = _federation(mode=mode)
        sim.server.setup()
        results[mode] = ([sim.server.run_round(r) for r in range(1, 4)], sim.final_state(), witnesses)
    (plain, plain_state, _), (he, he_state, he_witnesses) = results["plain"], results["he"]
    for k in plain_state:
        assert torch.allclose(plain_state[k], he_state[k], rtol=0, atol=1e-6), k
    assert [r["test_accuracy"] for r in plain] == [r["test_accuracy"] for r in he]
    assert all(w.refusals == [] for w in he_witnesses)
    assert all(r["clients"] == ["site0", "site1", "site2"] for r in he)
