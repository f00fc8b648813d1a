"""Hostile replies and failing clients: a refused reply excludes only its sender and never reaches the model."""

import struct
import warnings

import numpy as np
import pytest
import torch

from torchhefl.exceptions import ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.signed_uploads import SignedUpload, UploadSignature
from torchhefl.federated.transport import ClientUnavailableError
from torchhefl.federated.messages import EVALUATE_RES, FIT_RES, STATS_RES, decode_request, encode_request, encode_state, payload_of
from torchhefl.secure import InsecureKeyWarning, SecureStateDict, generate_keypair, wire
from train.federated import main

PLAIN = dict(mode="plain")
HE_CLIENTS = dict(mode="he", key_holder="clients")
HE_SERVER = dict(mode="he", key_holder="server", clip_norm=None)


def _config(mode: dict, **overrides) -> TrainConfig:
    base = dict(rounds=2, key_bits=512, extra={"allow_insecure_keys": True}, **mode)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def other_key():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True)


class _Tamper:
    """Wraps a client: its ``kind`` replies (default ``fit_res``) in ``rounds`` (and ``attempts``) go
    through ``edit(reply, parsed reply, tamper)``."""

    def __init__(self, sim, client, edit, rounds=(1,), attempts=None, kind="fit_res"):
        self.sim, self.client, self.edit, self.rounds, self.attempts = sim, client, edit, rounds, attempts
        self.cid, self.kind = client.cid, kind

    def handle(self, request: bytes) -> bytes:
        reply = self.client.handle(request)
        msg = decode_request(reply)  # the final answer to a fit (a HEM client answers refreshes first)
        if msg.kind == self.kind and msg.meta["round"] in self.rounds:
            if self.attempts is None or msg.meta["attempt"] in self.attempts:
                return self.edit(reply, msg, self)
        return reply


class _Recorder:
    """Wraps a client and keeps its last reply (for a replay by another client)."""

    def __init__(self, client):
        self.client, self.last = client, None

    def handle(self, request: bytes) -> bytes:
        self.last = self.client.handle(request)
        return self.last


def _train(cfg, prepare=None, before_round=None):
    sim = build(cfg)
    if prepare is not None:
        prepare(sim)
    sim.server.setup()
    results = []
    for r in range(1, cfg.rounds + 1):
        if before_round is not None:
            before_round(sim, r)
        results.append(sim.server.run_round(r))
    return sim, results


class _SkipsFit:
    """Wraps a client that does not answer the fit request of round 1 (it still evaluates)."""

    def __init__(self, client):
        self.client = client

    def handle(self, request: bytes) -> bytes:
        msg = decode_request(request)
        if msg.kind == "fit_ins" and msg.meta["round"] == 1:
            raise ClientUnavailableError(f"{self.client.cid} is away")
        return self.client.handle(request)


def _absent(sim):
    sim.transport.clients["site1"] = _SkipsFit(sim.clients[1])


def _rewrap(reply: bytes, meta=None, payload=None) -> bytes:
    msg = decode_request(reply)
    new_meta = dict(msg.meta, **(meta or {}))
    return encode_request(msg.kind, new_meta, payload_of(msg) if payload is None else payload)


def _edit_payload(reply: bytes, fn) -> bytes:
    """Re-encode the payload (a wire message) of ``reply`` after ``fn(meta, arrays)`` edits it."""
    inner = wire.decode(payload_of(decode_request(reply)))
    arrays = {k: v.copy() for k, v in inner.arrays.items()}
    meta = dict(inner.meta)
    fn(meta, arrays)
    return _rewrap(reply, payload=wire.encode(inner.kind, meta, arrays))


def _wrong_version(reply, msg, t):
    return reply[:8] + struct.pack("<H", 2) + reply[10:]


def _oversized(reply, msg, t):
    t.sim.server.max_message_bytes = 400_000
    return _rewrap(reply, meta={"padding": "x" * 500_000})


def _replay_of_site0(reply, msg, t):
    return _rewrap(t.sim.transport.clients["site0"].last, meta={"cid": "site1"})


COMMON = {
    "random bytes": (lambda reply, msg, t: b"\x9a\x00 not a message " * 9, "bad magic"),
    "truncated": (lambda reply, msg, t: reply[: len(reply) // 2], "truncated"),
    "wrong format version": (_wrong_version, "unsupported wire format version 2"),
    "wrong kind": (lambda reply, msg, t: encode_request(EVALUATE_RES, decode_request(reply).meta), "expected a 'fit_res'"),
    "stale round": (lambda reply, msg, t: _rewrap(reply, meta={"round": msg.meta["round"] - 1}), "stale or replayed"),
    "wrong attempt": (lambda reply, msg, t: _rewrap(reply, meta={"attempt": msg.meta["attempt"] + 1}), "stale or replayed"),
    "another sender": (lambda reply, msg, t: _rewrap(reply, meta={"cid": "site2"}), "signed as client 'site2'"),
    "oversized": (_oversized, "exceeds the limit of 400000 bytes"),
    "replayed update": (_replay_of_site0, "duplicates the one site0 sent"),
    "no payload": (lambda reply, msg, t: encode_request(FIT_RES, decode_request(reply).meta), "has no payload"),
    "bad metadata": (lambda reply, msg, t: _rewrap(reply, meta={"seconds": {"train": "soon"}}), "is not a number"),
}


def _plain_state(shape_weight=(1, 30), names=("weight", "bias"), fill=0.1, n=100):
    state = {names[0]: torch.full(shape_weight, fill, dtype=torch.float64), names[1]: torch.zeros(1, dtype=torch.float64)}
    return encode_state(state, {"num_examples": n})


PLAIN_CASES = {
    "wrong shape": (lambda reply, msg, t: _rewrap(reply, payload=_plain_state(shape_weight=(1, 29))), "has shape (1, 29)"),
    "wrong names": (lambda reply, msg, t: _rewrap(reply, payload=_plain_state(names=("w", "b"))), "do not match the model's"),
    "NaN values": (lambda reply, msg, t: _rewrap(reply, payload=_plain_state(fill=float("nan"))), "NaN or infinite"),
    "no examples": (lambda reply, msg, t: _rewrap(reply, payload=_plain_state(n=0)), "invalid num_examples 0"),
}


def _he_update(t, state=None, *, key=None, weight_bound=None, signed_round=1):
    """An upload signed by the tampering site for ``signed_round``, of ``state`` encrypted under ``key``."""
    ex = t.client.exchange
    state = state or t.client.model.state_dict()
    coins = None if key is not None else ex.private_key.coins()
    enc = SecureStateDict.encrypt(
        state, key or ex.public_key, weight=t.client.num_examples, weight_bound=weight_bound or ex.weight_bound, coins=coins
    )
    model = enc.to_bytes()
    nonce = enc.coins[0][0] if coins is not None else bytes(16)
    return SignedUpload(UploadSignature.sign(ex.identity, ex.roster, round=signed_round, attempt=1, nonce=nonce, model=model), model).to_bytes()


def _edit_model(reply: bytes, fn) -> bytes:
    """:func:`_edit_payload` of the SecureStateDict inside a signed upload (sites' key)."""
    upload = decode_request(payload_of(decode_request(reply)))
    inner = wire.decode(payload_of(upload))
    arrays = {k: v.copy() for k, v in inner.arrays.items()}
    meta = dict(inner.meta)
    fn(meta, arrays)
    return _rewrap(reply, payload=encode_request(upload.kind, upload.meta, wire.encode(inner.kind, meta, arrays)))


def _out_of_range(meta, arrays):
    arrays["ciphertexts"][0, :] = 0xFF


def _zero_ciphertext(meta, arrays):
    arrays["ciphertexts"][-1, :] = 0


HE_CASES = {
    "wrong key fingerprint": (
        lambda reply, msg, t: _rewrap(reply, payload=_he_update(t, key=t.other_key[0])),
        "expected key",
    ),
    "ciphertext out of range": (lambda reply, msg, t: _edit_model(reply, _out_of_range), "out of range"),
    "zero ciphertext": (lambda reply, msg, t: _edit_model(reply, _zero_ciphertext), "out of range"),
    "wrong format": (lambda reply, msg, t: _edit_model(reply, lambda m, a: m.update(format=99)), "format 99"),
    "wrong shape": (
        lambda reply, msg, t: _rewrap(
            reply, payload=_he_update(t, {"weight": torch.zeros(1, 29, dtype=torch.float64), "bias": torch.zeros(1, dtype=torch.float64)})
        ),
        "shapes or dtypes",
    ),
    "wrong names": (
        lambda reply, msg, t: _rewrap(reply, payload=_he_update(t, {"w": torch.zeros(1, 30, dtype=torch.float64), "b": torch.zeros(1, dtype=torch.float64)})),
        "do not match the model's",
    ),
    "weight bound above the cap": (
        lambda reply, msg, t: _rewrap(reply, payload=_he_update(t, weight_bound=t.client.exchange.weight_bound * 2)),
        "above the public cap",
    ),
    "signed for another round": (
        lambda reply, msg, t: _rewrap(reply, payload=_he_update(t, signed_round=2)),
        "update signed for round 2 attempt 1, expected round 1 attempt 1",
    ),
    "signature of other bytes": (
        lambda reply, msg, t: _rewrap(reply, payload=_forged_signature(payload_of(msg))),
        "update refused: the key or message relayed for site 'site1' does not carry its signature",
    ),
}


def _forged_signature(upload: bytes) -> bytes:
    msg = decode_request(upload)
    signature = msg.meta["signature"]
    return encode_request(msg.kind, {**msg.meta, "signature": ("0" if signature[0] != "0" else "1") + signature[1:]}, payload_of(msg))


def _cases(mode_cases):
    return [pytest.param(edit, reason, id=name) for name, (edit, reason) in {**COMMON, **mode_cases}.items()]


def _check_refused_reply(mode, edit, reason, other_key):
    cfg = _config(mode)

    def prepare(sim):
        sim.transport.clients["site0"] = _Recorder(sim.clients[0])
        tamper = _Tamper(sim, sim.clients[1], edit)
        tamper.other_key = other_key
        sim.transport.clients["site1"] = tamper

    sim, results = _train(cfg, prepare=prepare)
    first = results[0]
    assert first["dropped"] == ["site1"] and first["clients"] == ["site0", "site2"]
    assert reason in first["rejected"]["site1"], first["rejected"]
    assert results[1]["clients"] == ["site0", "site1", "site2"] and results[1]["rejected"] == {}
    # the model is exactly what it would be had site1 been absent from round 1
    ref_sim, ref_results = _train(cfg, prepare=_absent)
    assert ref_results[0]["clients"] == ["site0", "site2"]
    a, b = sim.final_state(), ref_sim.final_state()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert first["test_loss"] == ref_results[0]["test_loss"]


@pytest.mark.parametrize("edit, reason", _cases(PLAIN_CASES))
def test_plain_refused_reply_excludes_only_its_sender(edit, reason, other_key, caplog):
    _check_refused_reply(PLAIN, edit, reason, other_key)
    assert "client site1 left out of round 1" in caplog.text


@pytest.mark.parametrize("edit, reason", _cases(HE_CASES))
def test_he_clients_refused_reply_excludes_only_its_sender(edit, reason, other_key):
    _check_refused_reply(HE_CLIENTS, edit, reason, other_key)


def _masked_for_other_participants(reply, msg, t):
    return _edit_payload(reply, lambda m, a: m.update(participants=["site1", "site2"]))


@pytest.mark.parametrize(
    "edit, reason",
    [
        pytest.param(COMMON["random bytes"][0], "bad magic", id="random bytes"),
        pytest.param(COMMON["stale round"][0], "stale or replayed", id="stale round"),
        pytest.param(
            lambda r, m, t: _edit_payload(r, lambda meta, a: a["weights"].__setitem__((0, slice(None)), 0xFF)),
            "out of range",
            id="ciphertext out of range",
        ),
        pytest.param(_masked_for_other_participants, "another participant set", id="masks for other participants"),
    ],
)
def test_he_server_refused_reply_leaves_out_its_sender_in_one_attempt(edit, reason):
    """Secure aggregation unmasks the sum without the refused site from the others' shares: the
    round is never re-run (a re-run would let the server subtract the two sums)."""
    cfg = _config(HE_SERVER)
    sim, results = _train(cfg, prepare=lambda sim: sim.transport.clients.update(site1=_Tamper(sim, sim.clients[1], edit)))
    first = results[0]
    assert first["dropped"] == ["site1"] and first["clients"] == ["site0", "site2"] and first["attempts"] == 1
    assert reason in first["rejected"]["site1"]
    ref_sim, _ = _train(cfg, prepare=_absent)
    a, b = sim.final_state(), ref_sim.final_state()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "edit, reason",
    [
        pytest.param(lambda r, m, t: _rewrap(r, meta={"round": m.meta["round"] - 1}), "stale or replayed refresh request", id="stale round"),
        pytest.param(lambda r, m, t: _rewrap(r, meta={"seq": 5}), "refresh request number 5, expected 1", id="wrong sequence number"),
        pytest.param(lambda r, m, t: _rewrap(r, meta={"cid": "site2"}), "signed as client 'site2'", id="another sender"),
        pytest.param(lambda r, m, t: _rewrap(r, payload=b"\x9a\x00 not a message " * 9), "bad magic", id="garbage request"),
        pytest.param(lambda r, m, t: encode_request("refresh_req", m.meta), "has no payload", id="no payload"),
    ],
)
def test_he_server_refused_refresh_request_leaves_out_its_sender_in_one_attempt(edit, reason):
    cfg = _config(HE_SERVER, extra={"allow_insecure_keys": True, "hem_steps_per_product": 1})  # a round that refreshes
    tamper = lambda sim: sim.transport.clients.update(site1=_Tamper(sim, sim.clients[1], edit, kind="refresh_req"))  # noqa: E731
    sim, results = _train(cfg, prepare=tamper)
    first = results[0]
    assert first["dropped"] == ["site1"] and first["clients"] == ["site0", "site2"] and first["attempts"] == 1
    assert reason in first["rejected"]["site1"], first["rejected"]
    ref_sim, _ = _train(cfg, prepare=_absent)
    a, b = sim.final_state(), ref_sim.final_state()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-8)


def test_he_server_bounds_the_refresh_requests_of_one_fit(caplog):
    sim = build(_config(HE_SERVER, rounds=1, extra={"allow_insecure_keys": True, "hem_steps_per_product": 1}))
    sim.server.setup()
    sim.server.max_follow_ups = 0
    with pytest.raises(ProtocolError, match="only 0 of 3 clients answered"):
        sim.server.run_round(1)
    assert "more than 0 refresh requests for one fit" in caplog.text
    assert [p for p, _ in sim.server.exchange.decryptions] == ["statistics_sum"]


# -- too few good replies -----------------------------------------------------------------------------
def test_transient_garbage_below_min_clients_is_retried(caplog):
    cfg = _config(PLAIN, min_clients=3)
    sim, results = _train(
        cfg,
        prepare=lambda sim: sim.transport.clients.update(
            site1=_Tamper(sim, sim.clients[1], COMMON["random bytes"][0], attempts=(1,))
        ),
    )
    assert results[0]["attempts"] == 2 and results[0]["clients"] == ["site0", "site1", "site2"]
    assert results[0]["dropped"] == []
    assert "trying again (1 of 2)" in caplog.text
    ref_sim, _ = _train(cfg)
    a, b = sim.final_state(), ref_sim.final_state()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_persistent_garbage_below_min_clients_stops_with_the_model_untouched():
    cfg = _config(PLAIN, min_clients=3, rounds=1)
    sim = build(cfg)
    sim.transport.clients["site2"] = _Tamper(sim, sim.clients[2], COMMON["random bytes"][0])
    sim.server.setup()
    before = sim.final_state()
    with pytest.raises(ProtocolError, match=r"round 1: only 2 of 3 clients answered \(at least 3 needed; tried 3 times\)"):
        sim.server.run_round(1)
    after = sim.final_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sim.server.round == 0


def test_refused_statistics_stop_the_run_with_the_reason():
    cfg = _config(PLAIN, rounds=1)
    sim = build(cfg)

    class _BadStats:
        def handle(self, request):
            if decode_request(request).kind == "stats_ins":
                return encode_request(STATS_RES, {"cid": "site1"}, encode_state({"count": np.ones(1)}))
            return sim.clients[1].handle(request)

    sim.transport.clients["site1"] = _BadStats()
    with pytest.raises(ProtocolError, match="site1: standardize statistics payload holds"):
        sim.server.setup()


def test_cli_min_clients_above_clients_is_one_line_exit_2(capsys, tmp_path):
    code = main(["--mode", "plain", "--rounds", "1", "--min-clients", "4", "--no-progress", "--quiet", "--logdir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--min-clients must be between 1 and --clients (3), got 4" in err


def test_cli_oversized_replies_are_refused(capsys, tmp_path):
    code = main(["--mode", "plain", "--rounds", "1", "--max-message-bytes", "100", "--no-progress", "--quiet", "--logdir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "exceeds the limit of 100 bytes" in err and "standardisation needs every client's statistics" in err


# -- dropout in every mode ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [PLAIN, HE_CLIENTS, HE_SERVER], ids=["plain", "he-clients", "he-server"])
def test_dropout_in_every_mode_completes_the_round_without_the_client(mode, caplog):
    cfg = _config(mode, rounds=3)

    def vanish(sim, r):
        sim.transport.fail = {"site1"} if r == 2 else set()

    sim, results = _train(cfg, before_round=vanish)
    assert results[1]["dropped"] == ["site1"] and results[1]["clients"] == ["site0", "site2"]
    assert "client site1 left out of round 2" in caplog.text and "unreachable" in caplog.text
    assert results[2]["clients"] == ["site0", "site1", "site2"]
    plain_sim, _ = _train(_config(PLAIN, rounds=3, clip_norm=cfg.clip_norm), before_round=vanish)
    a, p = sim.final_state(), plain_sim.final_state()
    # packed fixed point (he-clients) is exact to 1e-6; HEM's 24-bit step matrices to about 1e-5
    atol = 1e-5 if mode is HE_SERVER else 1e-6
    for k in a:
        torch.testing.assert_close(a[k], p[k], rtol=0, atol=atol)
