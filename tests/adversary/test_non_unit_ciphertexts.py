"""Non-unit ciphertexts: a party sends ``c`` with ``gcd(c, n) != 1`` (``c = n``, a multiple of a prime).

Every Paillier ciphertext is a unit modulo ``n^2``; anything else encrypts nothing, and decrypting it
runs the key holder's CRT decryption on a value that is zero modulo a secret prime. A server relaying
the encrypted model to sites that hold the key, a site uploading to the server, and a site asking
the key-holding server for a refresh each try it; the receiver refuses the message with
``MalformedMessageError`` before decrypting anything, and the round goes on without the sender.
"""

import pytest

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import FIT_INS, decode_request, encode_request, payload_of
from torchhefl.secure import PrivateKey, wire

REFUSAL = r"is not a unit \(it shares a factor with n\)"


def _config(**overrides) -> TrainConfig:
    base = dict(mode="he", key_holder="clients", rounds=1, key_bits=512, extra={"allow_insecure_keys": True})
    base.update(overrides)
    return TrainConfig(**base)


def _with_ciphertext(payload: bytes, index: int, value: int, width: int) -> bytes:
    """``payload`` (a wire message with a ``ciphertexts`` array) with ciphertext ``index`` set to ``value``."""
    msg = wire.decode(payload)
    arrays = {k: v.copy() for k, v in msg.arrays.items()}
    arrays["ciphertexts"][index] = list(value.to_bytes(width, "big"))
    return wire.encode(msg.kind, dict(msg.meta), arrays)


def _inside(message: bytes, edit) -> bytes:
    """A protocol message (an upload, a global model) with ``edit`` applied to the payload it carries."""
    msg = decode_request(message)
    return encode_request(msg.kind, dict(msg.meta), edit(payload_of(msg)))


@pytest.fixture
def decryptions(monkeypatch):
    """Counts the ciphertexts any holder of a private key decrypts (by any path)."""
    seen = []
    real = PrivateKey.decrypt_raw_many

    def counting(self, cs, **kw):
        cs = list(cs)
        seen.append(len(cs))
        return real(self, cs, **kw)

    monkeypatch.setattr(PrivateKey, "decrypt_raw_many", counting)
    return seen


@pytest.mark.parametrize("value", ["n", "p"])
def test_a_server_relaying_c_n_to_key_holding_sites_is_refused(decryptions, value):
    sim = build(_config(rounds=2))
    sim.server.setup()
    sim.server.run_round(1)
    pk = sim.server.exchange.public_key
    site = sim.clients[0]
    sk = site.exchange.private_key
    bad = int(pk.n) if value == "n" else 5 * int(sk._p)  # the server cannot know p: the strongest case
    honest = sim.server.exchange.global_payload()
    meta = {"round": 2, "attempt": 1, "participants": [c.cid for c in sim.clients], "config": {}}
    tampered = encode_request(FIT_INS, meta, _inside(honest, lambda m: _with_ciphertext(m, 0, bad, pk.ciphertext_bytes)))
    decryptions.clear()
    with pytest.raises(MalformedMessageError, match="ciphertext 0 " + REFUSAL):
        site.handle(tampered)
    assert decryptions == []  # refused before any decryption
    # the same request with the honest model is answered
    reply = decode_request(site.handle(encode_request(FIT_INS, {**meta, "attempt": 2}, honest)))
    assert reply.kind == "fit_res"


def test_a_site_uploading_c_n_is_left_out_of_the_round():
    sim = build(_config(clients=3))
    sim.server.setup()
    pk = sim.server.exchange.public_key
    liar = sim.clients[1]
    honest_handle = liar.handle

    def handle(request: bytes) -> bytes:
        reply = honest_handle(request)
        msg = decode_request(reply)
        if msg.kind != "fit_res":
            return reply
        payload = _inside(payload_of(msg), lambda m: _with_ciphertext(m, 3, int(pk.n), pk.ciphertext_bytes))
        return encode_request(msg.kind, dict(msg.meta), payload)

    liar.handle = handle
    sim.server.transport.clients[liar.cid] = liar
    result = sim.server.run_round(1)
    assert result["clients"] == [sim.clients[0].cid, sim.clients[2].cid]
    assert result["rejected"].keys() == {liar.cid}
    assert "ciphertext 3 is not a unit" in result["rejected"][liar.cid]


def test_the_key_holding_server_refuses_a_refresh_of_c_n():
    sim = build(_config(key_holder="server", clip_norm=None))
    sim.server.setup()
    pk = sim.extras["public_key"]
    site = sim.clients[0]
    theta = site.exchange.read_encrypted(sim.server.exchange.global_payload(), 31)
    request, _masks = site.exchange.refresher.begin(theta, theta.scale)
    inner = decode_request(request)
    blinded = _with_ciphertext(payload_of(inner), 7, int(pk.n), pk.ciphertext_bytes)
    log = sim.server.exchange.decryptions  # what the server decrypted, by purpose
    before = len(log)
    with pytest.raises(MalformedMessageError, match="ciphertext 7 " + REFUSAL):
        sim.server.exchange.refresh(encode_request(inner.kind, dict(inner.meta), blinded))
    assert len(log) == before and sim.server.exchange.refreshes == 0
    # the untouched request is served
    sim.server.exchange.refresh(request)
    assert log[before:] == [("refresh", 31)] and sim.server.exchange.refreshes == 1
