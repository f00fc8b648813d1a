"""A server that chooses the set-up statistics a site standardises or fills its gaps with
(``--key-holder clients``).

The server holds the sites' public key, so it could encrypt moments of its choosing, shift an
honest sum by an offset (Paillier is malleable), leave a site out or count one twice, and so pick a
site's standardisation or fill values. Each site signs its encrypted statistics for the run, the
roster and the pass; the server relays every signed vector and each site sums them itself,
accepting exactly one vector per roster site, for this pass, one it sent among them.

The malicious server is the real :class:`Server` up to the statistics sum, whose relayed payload
it replaces with a forgery. Each forgery must leave the site refusing with an error that says why;
the control: the honest relay gives the site the moments of all the sites' rows.
"""

import numpy as np
import pytest

from torchhefl.data import local_moments
from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated import TrainConfig, build, signed_statistics
from torchhefl.federated.messages import STANDARDIZE_INS, STATS_INS, decode_request, encode_request, payload_of
from torchhefl.secure import PackedSum, wire


@pytest.fixture
def run():
    config = TrainConfig(mode="he", key_holder="clients", rounds=1, clients=3, key_bits=512, extra={"allow_insecure_keys": True})
    sim = build(config)
    replies = {c.cid: payload_of(decode_request(c.handle(encode_request(STATS_INS, {})))) for c in sim.clients}
    return sim, replies


def _chosen_moments(sim, replies):
    """Moments the server picked (every feature centred on 100), encrypted under the public key."""
    d = sim.clients[0]._X_raw.shape[1]
    vector = np.concatenate([[1.0], np.full(d, 100.0), np.full(d, 1e4 + 1.0)])
    return PackedSum.encrypt(vector, sim.server.exchange.public_key).to_bytes()


def _swapped_payload(sim, replies):
    """site1's signature kept, its vector replaced by the server's own encryption."""
    msg = decode_request(replies["site1"])
    forged = encode_request(msg.kind, msg.meta, _chosen_moments(sim, replies))
    return signed_statistics.bundle([replies["site0"], forged, replies["site2"]], "standardize")


def _offset(sim, replies):
    """site1's vector times Enc(m): its plaintext shifted, its signature kept."""
    pk = sim.server.exchange.public_key
    msg = decode_request(replies["site1"])
    part = PackedSum.from_bytes(payload_of(msg), public_key=pk)
    shifted = part + PackedSum.encrypt(np.zeros(len(part)) + 5.0, pk)  # a two-term sum now
    inner = wire.encode("torchhefl.PackedSum", {**wire.decode(shifted.to_bytes()).meta, "terms": 1}, wire.decode(shifted.to_bytes()).arrays)
    return signed_statistics.bundle([replies["site0"], encode_request(msg.kind, msg.meta, inner), replies["site2"]], "standardize")


def _left_out(sim, replies):
    return signed_statistics.bundle([replies["site0"], replies["site1"]], "standardize")


def _twice(sim, replies):
    return signed_statistics.bundle([replies["site0"], replies["site1"], replies["site1"]], "standardize")


def _other_pass(sim, replies):
    """Every vector re-sent as if for the imputation pass."""
    return signed_statistics.bundle(list(replies.values()), "impute")


def _foreign_for_site0(sim, replies):
    """site0 is shown a bundle that holds another vector of its own: one it never sent."""
    client = sim.clients[0]
    again = payload_of(decode_request(client.handle(encode_request(STATS_INS, {}))))
    client.exchange._sent["standardize"] = {again}  # as if site0 had sent only this one
    return signed_statistics.bundle(list(replies.values()), "standardize")


FORGERIES = {
    "moments of its choosing": (_chosen_moments, MalformedMessageError, "expected a 'torchhefl.StatisticsBundle'"),
    "a vector swapped under a site's signature": (_swapped_payload, ProtocolError, "does not carry its signature"),
    "an offset on a site's vector": (_offset, ProtocolError, "does not carry its signature"),
    "a site left out": (_left_out, ProtocolError, "not by every roster site"),
    "a site counted twice": (_twice, ProtocolError, "two vectors signed by site1"),
    "vectors relabelled for another pass": (_other_pass, MalformedMessageError, "bundle for the 'standardize' pass"),
    "a vector of site0 it did not send": (_foreign_for_site0, ProtocolError, "do not hold a vector this site sent"),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_server_cannot_choose_a_sites_statistics(run, forgery):
    sim, replies = run
    make, error, reason = FORGERIES[forgery]
    request = encode_request(STANDARDIZE_INS, {}, make(sim, replies))
    with pytest.raises(error, match=reason):
        sim.clients[0].handle(request)
    assert sim.clients[0].standardizer is None


def test_the_honest_relay_gives_every_sites_moments(run):
    sim, replies = run
    for blob in replies.values():
        sim.server.exchange.check_statistics(blob)
    relayed = sim.server.exchange.sum_statistics(list(replies.values()))
    assert sim.server.exchange.read_statistics(relayed) is None  # the server reads no sum
    sim.clients[0].handle(encode_request(STANDARDIZE_INS, {}, relayed))
    pooled = local_moments(np.concatenate([c._X_raw for c in sim.clients]))
    np.testing.assert_allclose(sim.clients[0].standardizer.mean, pooled.sum / pooled.count, rtol=1e-12)
