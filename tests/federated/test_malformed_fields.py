"""What the fuzzing found, one test each: a field of a well-formed message with a type or a range its
reader did not expect now gives ``MalformedMessageError`` (or, where a run cannot go on,
``ProtocolError``/``ConfigError``) with the reason, where it gave another error before."""

import copy
import warnings

import numpy as np
import pytest
import torch

from torchhefl.data import Dataset
from torchhefl.exceptions import ConfigError, MalformedMessageError, ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.checkpoint import Checkpoint, checkpoint_of
from torchhefl.federated.evaluation import evaluation_counts
from torchhefl.federated.exchange import standardizer_from_statistics
from torchhefl.federated.signed_uploads import SignedGlobal, SignedUpload, UploadSignature
from torchhefl.federated import signed_statistics
from torchhefl.federated.messages import FIT_INS, FIT_RES, STANDARDIZE_INS, STATS_RES, decode_request, decode_state, encode_request, encode_state, payload_of
from torchhefl.federated.strategies import weighted_mean
from torchhefl.nn import TaylorLoss
from torchhefl.secure import InsecureKeyWarning, PackedSum, SecureStateDict, wire

MODES = {
    "plain": dict(mode="plain"),
    "he-clients": dict(mode="he", key_holder="clients"),
    "he-server": dict(mode="he", key_holder="server", clip_norm=None),
}


def _sim(mode: str, setup: bool = True, **overrides):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 4)) * [1.0, 2.0, 0.5, 3.0]
    y = (X[:, 0] + 0.3 * rng.normal(size=120) > 0).astype(np.int64)
    cfg = TrainConfig(**{"rounds": 1, "key_bits": 512, "extra": {"allow_insecure_keys": True}, **MODES[mode], **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(cfg, dataset=Dataset(X, y, ["a", "b", "c", "d"], "label"))
    if setup:
        sim.server.setup()
    return sim


def _fit_request(sim, meta=None, payload=None, cid="site0") -> bytes:
    """A round-1 fit request for ``cid``; with the server-held key, after the round's secure
    aggregation key exchange (so the request carries the shares sealed for ``cid``)."""
    ids = sim.transport.client_ids
    ids = sim.server.exchange.open_round(sim.server, 1, ids)
    base = {"round": 1, "attempt": 1, "participants": ids, "config": {}, **sim.server.exchange.fit_meta(cid)}
    return encode_request(FIT_INS, {**base, **(meta or {})}, sim.server.exchange.global_payload() if payload is None else payload)


# -- wire and plain_state ------------------------------------------------------------------------------
def test_an_empty_array_of_astronomic_size_is_refused():
    """``[0, 2^39, 2^39]`` holds no bytes, but numpy cannot make an array of it (it raised ValueError)."""
    blob = wire.encode("x", {}, {"a": np.zeros((0, 3))}).replace(b'"shape":[0,3]', b'"shape":[0,549755813888,549755813888]')
    blob = blob[:10] + (len(blob) - 14).to_bytes(4, "little") + blob[14:]
    with pytest.raises(MalformedMessageError, match="invalid shape"):
        wire.decode(blob)


@pytest.mark.parametrize(
    "dtypes, arrays, reason",
    [
        ({"w": "qint8"}, {"w": np.zeros(2, dtype=np.int8)}, "unknown dtype 'qint8'"),  # .to() raised RuntimeError
        ({"w": "Bits8"}, {"w": np.zeros(2, dtype=np.uint8)}, "unknown dtype 'Bits8'"),
        ({"w": "float16"}, {"w": np.array([1e300])}, "a float16 tensor travels as <f2, not <f8"),  # overflowed to inf
        ({"w": "bfloat16"}, {"w": np.array([1e300])}, "holds NaN or infinite values"),
        ({"w": "int64"}, {"w": np.array([1.5])}, "a int64 tensor travels as <i8, not <f8"),
    ],
)
def test_plain_state_dtypes_must_be_the_arrays_own(dtypes, arrays, reason):
    with pytest.raises(MalformedMessageError, match=reason):
        decode_state(wire.encode("plain_state", {"dtypes": dtypes}, arrays))


# -- the server --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [True, 1.0])
def test_a_round_number_must_be_an_integer_not_a_bool_or_float(value):
    sim = _sim("plain")
    reply = sim.clients[0].handle(_fit_request(sim))
    msg = decode_request(reply)
    forged = encode_request(FIT_RES, {**msg.meta, "round": value}, payload_of(msg))
    with pytest.raises(MalformedMessageError, match=f"stale or replayed reply for round {value!r} attempt 1"):
        sim.server.read_fit_reply("site0", forged, server_round=1, attempt=1)


def test_summed_statistics_beyond_the_float_range_stop_setup_with_the_reason():
    """Two sites' finite sums that add up to infinity (the server's own sum then gave a standardiser
    of infinite mean; a count summing beyond the float range raised OverflowError)."""
    sim = _sim("plain", setup=False)
    huge = encode_state({"count": np.array([1.0]), "sum": np.full(4, 1e308), "sumsq": np.full(4, 1e308)})
    for cid in ("site0", "site1"):
        sim.transport.clients[cid] = _Answer(lambda request: encode_request(STATS_RES, {}, huge))
    with pytest.raises(ProtocolError, match="do not add up to usable moments: parameter 'sum' holds NaN or infinite values"):
        sim.server.setup()


class _Answer:
    def __init__(self, reply) -> None:
        self.reply = reply

    def handle(self, request: bytes) -> bytes:
        return self.reply(request)


@pytest.mark.parametrize(
    "stats, reason",
    [
        ({"count": np.array([0.0]), "sum": np.zeros(4), "sumsq": np.zeros(4)}, "a row count of 0 is not in"),
        ({"count": np.array([1e300]), "sum": np.zeros(4), "sumsq": np.zeros(4)}, "a row count of 1e[+]300 is not in"),
        ({"count": np.array([2.5]), "sum": np.zeros(4), "sumsq": np.zeros(4)}, "non-negative row count"),
        ({"count": np.array([3.0]), "sum": np.zeros(3), "sumsq": np.zeros(3)}, "statistics for 3 features, expected 4"),
        ({"count": np.zeros(()), "sum": np.zeros(4), "sumsq": np.zeros(4)}, r"shapes \(\), \(4,\) and \(4,\)"),
        ({"count": np.array([3.0]), "sum": np.full(4, np.inf), "sumsq": np.ones(4)}, "finite mean"),
        ({"sum": np.zeros(4), "sumsq": np.zeros(4)}, r"statistics hold \['sum', 'sumsq'\]"),
    ],
)
def test_statistics_that_give_no_standardisation(stats, reason):
    with pytest.raises(MalformedMessageError, match=reason):
        standardizer_from_statistics(stats, num_features=4)


def test_a_site_refuses_a_standardisation_it_cannot_use():
    """A site indexed ``stats["count"][0]`` of whatever arrived (IndexError, KeyError before)."""
    sim = _sim("plain")
    bad = encode_request(STANDARDIZE_INS, {}, encode_state({"count": np.array(3.0), "sum": np.zeros(4), "sumsq": np.zeros(4)}))
    with pytest.raises(MalformedMessageError, match="statistics of shapes"):
        sim.clients[0].handle(bad)


def test_with_the_sites_key_one_statistics_vector_is_one_site():
    """A vector claiming to sum 1024 sites made the sum raise OverflowError out of ``setup``."""
    sim = _sim("he-clients", setup=False)
    pk, sk = sim.clients[0].exchange.public_key, sim.clients[0].exchange.private_key
    part = PackedSum.encrypt(np.ones(9), pk)
    forged = wire.encode("torchhefl.PackedSum", {**wire.decode(part.to_bytes()).meta, "terms": 1024}, wire.decode(part.to_bytes()).arrays)
    ex = sim.clients[0].exchange
    with pytest.raises(MalformedMessageError, match="expected a 'torchhefl.SignedStatistics' message"):
        sim.server.exchange.check_statistics(forged)  # unsigned
    signed = signed_statistics.sign(ex.identity, ex.roster, pk.fingerprint, "standardize", forged)
    with pytest.raises(MalformedMessageError, match="claims to be a sum of 1024 vectors"):
        sim.server.exchange.check_statistics(signed)
    assert PackedSum.from_bytes(part.to_bytes(), public_key=pk).terms == 1 and sk is not None


def test_with_the_sites_key_every_update_claims_the_public_cap():
    """A smaller claimed weight bound passed, and then no site could decrypt the sum."""
    sim = _sim("he-clients")
    ex = sim.clients[0].exchange
    state = sim.clients[0].model.state_dict()
    enc = SecureStateDict.encrypt(state, ex.public_key, weight=10, weight_bound=10, coins=ex.private_key.coins())
    model = enc.to_bytes()
    signature = UploadSignature.sign(ex.identity, ex.roster, round=1, attempt=1, nonce=enc.coins[0][0], model=model)
    update = SignedUpload(signature, model).to_bytes()
    with pytest.raises(MalformedMessageError, match=f"below the public cap of {ex.weight_bound}"):
        sim.server.exchange.check_update(update)


def test_plain_fedavg_of_huge_counts_stays_finite():
    """``sum n w / sum n`` overflowed for counts near 1e308 (the server's evaluation then crashed)."""
    out = weighted_mean([({"w": np.array([3.0, -2.0])}, 9 * 10**307), ({"w": np.array([1.0, 2.0])}, 9 * 10**307)])
    np.testing.assert_allclose(out["w"], [2.0, 0.0])


def test_evaluation_of_a_model_broken_into_nan_counts_it_in_the_lowest_bin():
    logits = torch.tensor([float("nan"), 2.0, -2.0], dtype=torch.float64)
    counts = evaluation_counts(logits, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), TaylorLoss(reduction="sum"))
    assert counts["pos_hist"][0] == 1 and counts["pos_hist"].sum() == 2 and counts["neg_hist"].sum() == 1


def test_hem_statistics_are_checked_per_site():
    """With the server-held key a site's statistics were not checked before the sum (a 0-d array
    raised IndexError out of ``setup``)."""
    sim = _sim("he-server", setup=False)
    sim.server.exchange.setup(sim.server)
    blob = sim.clients[0].exchange.write_statistics({"count": np.array([1.0]), "sum": np.zeros(4), "sumsq": np.zeros(4)})
    msg = wire.decode(blob)
    zero_d = wire.encode(msg.kind, msg.meta, {"values": np.zeros((), dtype=np.uint8)})
    with pytest.raises(MalformedMessageError, match="masked statistics of -1 ciphertexts for 9 values"):
        sim.server.exchange.check_statistics(zero_d)
    with pytest.raises(MalformedMessageError, match="unexpected format, scale or arrays"):
        sim.server.exchange.check_statistics(wire.encode(msg.kind, {**msg.meta, "scale": True}, msg.arrays))


# -- a site ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_a_site_refuses_a_model_of_other_shapes(mode):
    """``load_state_dict`` raised RuntimeError for a global model of other names or shapes."""
    sim = _sim(mode)
    client = sim.clients[0]
    error = MalformedMessageError
    if mode == "plain":
        payload = encode_state({"weight": torch.zeros(1, 5, dtype=torch.float64), "bias": torch.zeros(1, dtype=torch.float64)})
        reason = r"the global model's 'weight' has shape \(1, 5\), expected \(1, 4\)"
    elif mode == "he-clients":  # refused before it is decrypted: round 1's model must be the agreed initial one
        state = {"weight": torch.zeros(1, 5, dtype=torch.float64), "bias": torch.zeros(1, dtype=torch.float64)}
        payload = SignedGlobal(SecureStateDict.encrypt(state, client.exchange.public_key, public=True).to_bytes()).to_bytes()
        error, reason = ProtocolError, "it is not the initial model every party draws from the run's seed"
    else:
        payload = sim.server.exchange.global_payload().replace(b'"shape":[5]', b'"shape":[6]')
        reason = "malformed EncryptedTensor message|ciphertext array|expected"
    with pytest.raises(error, match=reason):
        client.handle(_fit_request(sim, payload=payload))


@pytest.mark.parametrize("mode,limit", [("he-clients", None), ("he-server", None), ("he-server", "default")])
def test_a_proximal_term_too_large_to_train_with_is_a_protocol_refusal(mode, limit):
    """A finite but huge ``proximal_mu`` made training overflow: OverflowError from the fixed-point
    step (server-held key, without the safe step) or ValueError from encrypting a NaN model (sites'
    key). With the server-key mode's safe step (its default) the step shrinks with the curvature,
    ``mu`` included, so the site trains a bounded step instead of overflowing."""
    extra = {} if mode != "he-server" or limit == "default" else {"hem_step_limit": None}
    sim = _sim(mode, clip_norm=None, extra={"allow_insecure_keys": True, **extra})  # clipping would keep the steps bounded
    request = _fit_request(sim, {"config": {"proximal_mu": 1e300}})
    if limit == "default":
        assert decode_request(sim.clients[0].handle(request)).kind in ("refresh_req", FIT_RES)
        return
    with pytest.raises(ProtocolError, match="cannot (train round 1 on ciphertexts|send its round 1 update)"):
        sim.clients[0].handle(request)


def test_a_non_finite_training_loss_is_left_out_of_the_reply():
    """``json.dumps(allow_nan=False)`` raised ValueError for a site whose batches all gave NaN."""
    sim = _sim("plain")
    client = sim.clients[0]
    client.fit = lambda server_round, proximal_mu=0.0: float("nan")
    msg = decode_request(client.handle(_fit_request(sim)))
    assert msg.kind == "fit_res" and "train_loss" not in msg.meta


def test_hem_key_from_the_server_must_be_plain_hexadecimal():
    """``int(n, 16)`` took ``0x``, ``_`` and spaces."""
    sim = _sim("he-server", setup=False)
    client = sim.clients[0]
    key = sim.server.exchange.public_key.to_dict()
    for n in ("0x" + key["n"], key["n"][:5] + "_" + key["n"][5:], " " + key["n"]):
        with pytest.raises(MalformedMessageError, match="n must be hexadecimal"):
            client.handle(encode_request("hem_keys_ins", {"public_key": {**key, "n": n}}))


# -- checkpoints -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint():
    sim = _sim("plain")
    sim.server.run_round(1)
    return checkpoint_of(sim, sim.config.to_dict())


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda c: setattr(c, "torch_rng", np.zeros(5056, dtype=np.uint8)), "torch RNG state is invalid"),  # RuntimeError at restore
        (lambda c: setattr(c, "torch_rng", np.zeros(7, dtype=np.uint8)), "torch RNG state of shape"),
        (lambda c: c.numpy_rng.update(pos=10**6), "numpy RNG state is not numpy's MT19937 state"),
        (lambda c: c.numpy_rng.update(name=None), "numpy RNG state is not numpy's MT19937 state"),
        (lambda c: setattr(c, "python_rng", [3, [0] * 10, None]), "Python RNG state"),  # ValueError at restore
        (lambda c: setattr(c, "python_rng", 5), "Python RNG state"),  # TypeError at restore
        (lambda c: setattr(c, "strategy", {"state": {}}), "strategy state"),  # KeyError at restore
        (lambda c: setattr(c, "strategy", {"name": "fedavg", "state": []}), "strategy state"),  # AttributeError
    ],
)
def test_a_checkpoint_that_would_not_restore_is_refused_when_read(checkpoint, edit, reason):
    bad = copy.deepcopy(checkpoint)
    edit(bad)
    with pytest.raises(MalformedMessageError, match=reason):
        Checkpoint.from_bytes(bad.to_bytes())
    assert Checkpoint.from_bytes(checkpoint.to_bytes()).round == 1


# -- Flower ------------------------------------------------------------------------------------------------------
def test_a_hello_of_the_wrong_types_is_malformed_not_a_value_error():
    """``int(record["num-features"])`` raised ValueError or TypeError for a string, bytes or a list."""
    flwr_app = pytest.importorskip("flwr.app")
    from torchhefl.flower.deployment import DeploymentSettings, classes_digest, read_hellos

    config = DeploymentSettings.from_run_config({"clients": 1, "mode": "plain"}).config
    good = {"partition-id": 0, "num-partitions": 1, "num-features": 4, "num-classes": 2, "classes": classes_digest((0, 1)),
            "public-key": ""}
    for field, value in [("num-features", "x"), ("num-features", [1]), ("partition-id", "0"), ("public-key", "0xzz"),
                         ("num-classes", "2"), ("num-classes", 2.0), ("classes", b"\x00" * 32), ("classes", ["ab"])]:
        content = flwr_app.RecordDict({"torchhefl.hello": flwr_app.ConfigRecord({**good, field: value})})
        with pytest.raises(MalformedMessageError, match="malformed record"):
            read_hellos(config, {7: content})
    content = flwr_app.RecordDict({"torchhefl.hello": flwr_app.ConfigRecord({**good, "public-key": "10"})})
    with pytest.raises(MalformedMessageError, match="not a Paillier modulus"):
        read_hellos(config, {7: content})
    assert read_hellos(config, {7: flwr_app.RecordDict({"torchhefl.hello": flwr_app.ConfigRecord(good)})}).num_features == 4
    with pytest.raises(ConfigError, match="num-partitions=2"):
        read_hellos(config, {7: flwr_app.RecordDict({"torchhefl.hello": flwr_app.ConfigRecord({**good, "num-partitions": 2})})})


def test_a_run_config_of_the_wrong_types_is_a_config_error():
    """``int(inf)`` raised OverflowError, ``float("abc")`` ValueError, on the sites reading the run config."""
    pytest.importorskip("flwr")
    from torchhefl.flower.deployment import DeploymentSettings

    for key, value, reason in [
        ("rounds", float("inf"), "rounds must be an integer, got inf"),
        ("seed", float("nan"), "seed must be an integer, got nan"),
        ("clip-norm", "abc", "clip-norm must be a number, got 'abc'"),
        ("reply-timeout", "soon", "reply-timeout must be a number, got 'soon'"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            DeploymentSettings.from_run_config({key: value})
