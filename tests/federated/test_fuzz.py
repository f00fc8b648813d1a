"""Fuzzing: over ten thousand malformed inputs to the parsers that face the network.

``SecureStateDict.from_bytes`` and the server's own reply handling (``Server.read_fit_reply`` and
``Server.read_stats_reply``, the functions ``run_round`` and ``standardize`` call for each reply)
may raise only the declared ``MalformedMessageError`` or ``KeyMismatchError`` — never an
``IndexError``, ``KeyError``, ``TypeError``, ``OverflowError`` or a hang. Every generator is
derandomised so CI sees the same inputs each run; each test asserts how many inputs it tried.
"""

import copy
import json
import struct
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import decode_request, encode_request
from torchhefl.secure import InsecureKeyWarning, SecureStateDict, generate_keypair

DECLARED = (MalformedMessageError, KeyMismatchError)
_PREFIX = struct.Struct("<8sHI")

#: inputs per test; the tests below add up to TOTAL_INPUTS
N_RANDOM, N_FRAMED, N_FLIPS, N_CUTS, N_HEADER = 1200, 800, 1500, 500, 1500
N_SERVER_FLIPS, N_SERVER_HEADER, N_SERVER_KINDS, N_STATS = 700, 900, 200, 400
#: the server tests run in each of the three modes
TOTAL_INPUTS = (N_RANDOM + N_FRAMED + N_FLIPS + N_CUTS + N_HEADER) + 3 * (N_SERVER_FLIPS + N_SERVER_HEADER + N_SERVER_KINDS + N_STATS)
assert TOTAL_INPUTS >= 10_000


def _settings(n: int):
    return settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def _fuzz(n: int, strategy, target) -> None:
    """Run ``target`` on ``n`` inputs drawn from ``strategy``; only the declared errors may escape."""
    calls = []

    @_settings(n)
    @given(strategy)
    def check(blob):
        calls.append(1)
        try:
            target(blob)
        except DECLARED:
            pass

    check()
    assert len(calls) >= n


# -- inputs -----------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def _split(blob: bytes) -> tuple[dict, int, bytes]:
    magic, version, hlen = _PREFIX.unpack_from(blob)
    header = json.loads(blob[_PREFIX.size : _PREFIX.size + hlen])
    return header, version, blob[_PREFIX.size + hlen :]


def _join(header, body: bytes, version: int = 1) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return _PREFIX.pack(b"THEFL\x00\r\n", version, len(text)) + text + body


def _paths(node, prefix=()):
    """Every key path into a JSON document (dict keys and list indices)."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _edit(doc, path, action, value):
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def header_edits(valid: bytes):
    """Valid bytes with one header field replaced by any JSON value, or deleted (re-encoded, length fixed)."""
    header, version, body = _split(valid)
    paths = [p for p in _paths(header)]
    return st.builds(
        lambda path, action, value, version_: _join(_edit(header, path, action, value), body, version_),
        st.sampled_from(paths),
        st.sampled_from(["replace", "replace", "delete"]),
        json_values,
        st.sampled_from([version, version, version, 0, 2, 65535]),
    )


def bit_flips(valid: bytes):
    return st.builds(
        lambda positions: _flip(valid, positions),
        st.lists(st.integers(min_value=0, max_value=8 * len(valid) - 1), min_size=1, max_size=8),
    )


def _flip(blob: bytes, positions) -> bytes:
    out = bytearray(blob)
    for p in positions:
        out[p // 8] ^= 1 << (p % 8)
    return bytes(out)


def cuts(valid: bytes):
    """Truncated, extended, or with a slice removed or repeated."""
    n = len(valid)
    return st.one_of(
        st.integers(min_value=0, max_value=n - 1).map(lambda k: valid[:k]),
        st.binary(min_size=1, max_size=64).map(lambda extra: valid + extra),
        st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda ab: valid[: min(ab)] + valid[max(ab) :]),
        st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda ab: valid[: max(ab)] + valid[min(ab) :]),
    )


def framed_garbage():
    """A valid prefix (magic, version, header length) in front of random or JSON-ish bytes."""
    body = st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()))
    return st.builds(
        lambda b, hlen, tail: _PREFIX.pack(b"THEFL\x00\r\n", 1, hlen if hlen is not None else len(b)) + b + tail,
        body,
        st.none() | st.integers(min_value=0, max_value=2**32 - 1),
        st.binary(max_size=64),
    )


# -- SecureStateDict.from_bytes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True), generate_keypair(512, allow_insecure=True)


@pytest.fixture(scope="module")
def valid_ssd(keys):
    (pk, _), _ = keys
    state = {"weight": torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(1, 30), "bias": torch.zeros(1, dtype=torch.float64)}
    return SecureStateDict.encrypt(state, pk, weight=100, weight_bound=1000).to_bytes()


def _parse_ssd(keys):
    (pk, sk), _ = keys

    def target(blob):
        ssd = SecureStateDict.from_bytes(blob, public_key=pk)
        assert isinstance(ssd, SecureStateDict)

    return target


def test_ssd_random_bytes(keys):
    _fuzz(N_RANDOM, st.binary(max_size=2048), _parse_ssd(keys))


def test_ssd_framed_garbage(keys):
    _fuzz(N_FRAMED, framed_garbage(), _parse_ssd(keys))


def test_ssd_bit_flips(keys, valid_ssd):
    _fuzz(N_FLIPS, bit_flips(valid_ssd), _parse_ssd(keys))


def test_ssd_truncation_and_splices(keys, valid_ssd):
    _fuzz(N_CUTS, cuts(valid_ssd), _parse_ssd(keys))


def test_ssd_header_field_edits(keys, valid_ssd):
    _fuzz(N_HEADER, header_edits(valid_ssd), _parse_ssd(keys))


def test_ssd_fuzz_inputs_start_valid(keys, valid_ssd):
    """The mutations start from bytes the parser accepts, and it does refuse another key's bytes."""
    (pk, sk), (other_pk, _) = keys
    assert SecureStateDict.from_bytes(valid_ssd, public_key=pk).decrypt(sk)["bias"].tolist() == [0.0]
    with pytest.raises(KeyMismatchError):
        SecureStateDict.from_bytes(valid_ssd, public_key=other_pk)


# -- the server's handling of replies -----------------------------------------------------------------
def _server_and_replies(mode: dict):
    cfg = TrainConfig(rounds=1, key_bits=512, extra={"allow_insecure_keys": True}, **mode)
    sim = build(cfg)
    sim.server.setup()
    ids = sim.transport.client_ids
    request = encode_request(
        "fit_ins", {"round": 1, "attempt": 1, "participants": ids, "config": {}}, sim.server.exchange.global_payload()
    )
    fit_reply = sim.clients[0].handle(request)
    seq = 0
    while decode_request(fit_reply).kind == "refresh_req":  # HEM: served as the server's round loop does
        seq += 1
        fit_reply = sim.clients[0].handle(sim.server.answer_refresh("site0", fit_reply, server_round=1, attempt=1, seq=seq))
    stats_reply = sim.clients[0].handle(encode_request("stats_ins", {}))
    return sim.server, ids, fit_reply, stats_reply


_MODES = {
    "plain": dict(mode="plain"),
    "he-clients": dict(mode="he", key_holder="clients"),
    "he-server": dict(mode="he", key_holder="server", clip_norm=None),
}


@pytest.fixture(scope="module", params=list(_MODES))
def server_case(request):
    return _server_and_replies(_MODES[request.param])


def _read_fit(server, ids):
    def target(blob):
        msg, update = server.read_fit_reply("site0", blob, server_round=1, attempt=1, participants=ids)
        assert msg.kind == "fit_res" and msg.meta.get("cid", "site0") == "site0"

    return target


def _inner_header_edits(valid_reply: bytes):
    """Edits inside the payload's own header (the update), the envelope re-encoded around it."""
    envelope, version, body = _split(valid_reply)
    return header_edits(body).map(lambda payload: encode_request("fit_res", envelope["meta"], payload))


def test_server_accepts_the_unmodified_replies(server_case):
    server, ids, fit_reply, stats_reply = server_case
    msg, update = server.read_fit_reply("site0", fit_reply, server_round=1, attempt=1, participants=ids)
    assert msg.meta["round"] == 1 and update is not None
    assert server.read_stats_reply("site0", stats_reply).kind == "stats_res"
    with pytest.raises(MalformedMessageError, match="signed as client 'site0'"):
        server.read_fit_reply("site1", fit_reply, server_round=1, attempt=1, participants=ids)


def test_server_fit_reply_bit_flips_and_cuts(server_case):
    server, ids, fit_reply, _ = server_case
    _fuzz(N_SERVER_FLIPS, st.one_of(bit_flips(fit_reply), cuts(fit_reply)), _read_fit(server, ids))


def test_server_fit_reply_header_edits(server_case):
    server, ids, fit_reply, _ = server_case
    _fuzz(N_SERVER_HEADER, st.one_of(header_edits(fit_reply), _inner_header_edits(fit_reply)), _read_fit(server, ids))


def test_server_fit_reply_wrong_kinds_and_garbage(server_case):
    server, ids, fit_reply, _ = server_case
    envelope, _, body = _split(fit_reply)
    kinds = st.sampled_from(["stats_res", "evaluate_res", "fit_ins", "standardize_res", "hem_keys_res", "plain_state"]) | st.text(max_size=12)
    wrong_kind = st.builds(lambda k: _join(dict(envelope, kind=k), body), kinds)
    _fuzz(N_SERVER_KINDS, st.one_of(wrong_kind, st.binary(max_size=512), framed_garbage()), _read_fit(server, ids))


def test_server_stats_reply_fuzz(server_case):
    server, _, _, stats_reply = server_case
    envelope, _, body = _split(stats_reply)
    inputs = st.one_of(
        bit_flips(stats_reply),
        cuts(stats_reply),
        header_edits(stats_reply),
        header_edits(body).map(lambda payload: encode_request("stats_res", envelope["meta"], payload)),
    )
    _fuzz(N_STATS, inputs, lambda blob: server.read_stats_reply("site0", blob))
