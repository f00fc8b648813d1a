"""Fuzzing: tens of thousands of malformed inputs to every parser that reads another party's bytes.

Each parser may raise only the declared errors (``MalformedMessageError``, ``KeyMismatchError``; a
site's request handler also ``ProtocolError``, a checkpoint restore ``ConfigError``) — never an
``IndexError``, ``KeyError``, ``TypeError``, ``OverflowError``, ``RecursionError``, a plain
``ValueError`` or a hang. What is fuzzed:

* ``SecureStateDict``, ``EncryptedTensor`` and ``PackedSum`` ``from_bytes`` (random bytes, bit flips,
  truncations, header edits);
* the server's handling of each reply kind, in all three modes, through the functions
  ``run_round``, ``setup`` and ``evaluate`` call for each reply (``read_fit_reply``,
  ``read_stats_reply``, ``read_evaluate_reply``, ``answer_global_request``, ``answer_follow_up``);
* ``Server.run_round`` itself, a few hundred times per mode, with one site's reply edited on the way:
  the round completes with the others, the sender in ``rejected`` and ``dropped``, and the model is
  the one had that site been absent (the bulk of the inputs goes through the per-reply functions
  above, which are what ``run_round`` calls, because a full round costs a thousand times more);
* a site's ``Client.handle`` (and HEM's client) on edited requests of every kind;
* checkpoints (parsed, then restored into a run) and Paillier key files;
* the Flower adapters (``unpack``, ``read_hellos``, a site's ``Site.handle``).

Header edits work on the JSON text of every nested layer of a message (a reply's envelope, the
update inside it, the tensor inside that): a field replaced by a value of each JSON type, including
literals ``json.dumps`` will not write (integers of 5,000 digits, ``NaN``, ``Infinity``, ``1e400``,
nesting thousands deep, an object with a key twice), deleted, or duplicated. Every generator is
derandomised so CI sees the same inputs each run; each test asserts how many inputs it tried, and
the counts below add up to :data:`TOTAL_INPUTS`.
"""

import copy
import functools
import json
import random
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchhefl.data import Dataset
from torchhefl.exceptions import ConfigError, KeyMismatchError, MalformedMessageError, ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.checkpoint import Checkpoint, checkpoint_of, restore_checkpoint
from torchhefl.federated.messages import FIT_RES, GLOBAL_REQ, STATS_INS, decode_request, encode_request
from torchhefl.secure import (
    EncryptedTensor,
    InsecureKeyWarning,
    PackedSum,
    SecureStateDict,
    generate_keypair,
    load_private_key,
    load_public_key,
)

DECLARED = (MalformedMessageError, KeyMismatchError)
#: what a site may answer a request with besides a reply: the declared errors, and a protocol refusal
SITE_DECLARED = DECLARED + (ProtocolError,)
_PREFIX = struct.Struct("<8sHI")
MAGIC = b"THEFL\x00\r\n"

#: inputs per test; the tests below add up to TOTAL_INPUTS
N_RANDOM, N_FRAMED, N_FLIPS, N_CUTS, N_HEADER = 1000, 600, 1000, 400, 1000
N_CONTAINER_EDITS = 500  # per container kind: EncryptedTensor, PackedSum
N_SERVER_FLIPS, N_SERVER_HEADER, N_SERVER_KINDS, N_STATS, N_SETUP = 400, 600, 150, 300, 60  # per mode
N_SERVER_GRID = {"plain": 1420, "he-clients": 2210, "he-server": 1680}  # every field x every JSON type
N_FOLLOW_UPS = 400  # per mode: global_req (all modes), refresh_req (HEM), evaluate_res (he-clients)
N_LOOP = {"plain": 200, "he-clients": 200, "he-server": 150}  # full run_round calls
N_SITE = 500  # per mode: Client.handle on edited requests
N_SITE_GRID = {"plain": 3150, "he-clients": 6290, "he-server": 5550}
N_CHECKPOINT, N_CHECKPOINT_GRID = 500, 2830
N_KEY_FILES, N_KEY_GRID = 600, 510
N_FLOWER = 300
MODES = ("plain", "he-clients", "he-server")
TOTAL_INPUTS = (
    N_RANDOM + N_FRAMED + N_FLIPS + N_CUTS + N_HEADER + 2 * N_CONTAINER_EDITS
    + 3 * (N_SERVER_FLIPS + N_SERVER_HEADER + N_SERVER_KINDS + N_STATS + N_SETUP + N_FOLLOW_UPS + N_SITE)
    + sum(N_SERVER_GRID.values()) + sum(N_LOOP.values()) + sum(N_SITE_GRID.values())
    + N_CHECKPOINT + N_CHECKPOINT_GRID + N_KEY_FILES + N_KEY_GRID + N_FLOWER
)
assert TOTAL_INPUTS >= 10_000


def _settings(n: int):
    return settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def _fuzz(n: int, strategy, target, declared=DECLARED) -> int:
    """Run ``target`` on ``n`` inputs drawn from ``strategy``; only ``declared`` errors may escape.
    Returns how many inputs were refused."""
    calls, refused = [], []

    @_settings(n)
    @given(strategy)
    def check(blob):
        calls.append(1)
        try:
            target(blob)
        except declared:
            refused.append(1)

    check()
    assert len(calls) >= n
    return len(refused)


def _each(inputs, target, declared=DECLARED) -> tuple[int, int]:
    """Run ``target`` on every input of a list; only ``declared`` errors may escape. ``(tried, refused)``."""
    refused = 0
    for blob in inputs:
        try:
            target(blob)
        except declared:
            refused += 1
    return len(inputs), refused


# -- JSON text the standard writer will not produce --------------------------------------------------
class Raw(str):
    """JSON text spliced into a header verbatim (``NaN``, ``1e400``, a 5,000-digit integer, ``[[[...]]]``)."""


class Dup(list):
    """An object written with the ``(key, value)`` pairs it holds, so a key can appear twice."""


def _text(node) -> str:
    if isinstance(node, Raw):
        return str(node)
    if isinstance(node, Dup):
        return "{" + ",".join(json.dumps(k) + ":" + _text(v) for k, v in node) + "}"
    if isinstance(node, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _text(v) for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_text(v) for v in node) + "]"
    return json.dumps(node)


HUGE = Raw("9" * 5000)
#: one value of each JSON type, and the literals and sizes that broke parsers before
TYPED = [
    None, True, False, 0, 1, -1, 7, 2**40, 2**63, -(2**63) - 1, HUGE, Raw("-" + "9" * 5000), Raw("9" * 308),
    Raw("1" + "0" * 308), 0.5, -0.0, 1e308, -5e-324, Raw("NaN"), Raw("Infinity"), Raw("-Infinity"),
    Raw("1e400"), Raw("-1e400"), "", "x", "site0", "site1", "float64", "qint8", "payload", "é",
    Raw('"\\ud800"'), [], [0], [1, 2], [HUGE], ["site0"], [0, 2**39, 2**39], {}, {"a": 1},
    {"n": "ff", "bits": 8}, Raw("[" * 100 + "]" * 100), Raw("[" * 5000 + "]" * 5000),
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
hostile_values = st.one_of(
    st.sampled_from(TYPED),
    json_values,
    st.integers(min_value=309, max_value=6000).map(lambda k: Raw("7" * k)),
    st.integers(min_value=65, max_value=3000).map(lambda k: Raw("[" * k + "0" + "]" * k)),
    st.integers(min_value=65, max_value=3000).map(lambda k: Raw('{"a":' * k + "0" + "}" * k)),
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1E+309"]).map(Raw),
)


def _split(blob: bytes) -> tuple[dict, int, bytes]:
    magic, version, hlen = _PREFIX.unpack_from(blob)
    header = json.loads(blob[_PREFIX.size : _PREFIX.size + hlen])
    return header, version, blob[_PREFIX.size + hlen :]


def _frame(text: str, body: bytes, version: int = 1) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return _PREFIX.pack(MAGIC, version, len(raw)) + raw + body


def _join(header, body: bytes, version: int = 1) -> bytes:
    return _frame(_text(header), body, version)


def _paths(node, prefix=(), long_list: int = 3):
    """Key paths into a JSON document (dict keys, list indices; of a long list its first and last
    ``long_list - 1`` and 1 elements only)."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,), long_list)
    elif isinstance(node, list):
        idx = range(len(node)) if len(node) <= long_list else [*range(long_list - 1), len(node) - 1]
        for i in idx:
            yield from _paths(node[i], prefix + (i,), long_list)


def _get(doc, path):
    for key in path:
        if type(doc) not in (dict, list):  # a spliced literal or a duplicated object is a leaf
            raise KeyError(key)
        doc = doc[key]
    return doc


def _edit(doc, path, action, value):
    """``doc`` with the node at ``path`` replaced by ``value``, deleted, duplicated (an object's last
    key written again with ``value``) or given an extra key; unchanged if ``path`` is gone."""
    try:
        node = _get(doc, path)
    except (KeyError, IndexError, TypeError):
        return doc
    if action == "replace":
        new = value
    elif action == "duplicate" and isinstance(node, dict) and node:
        items = list(node.items())
        new = Dup(items + [(items[-1][0], value)])
    elif action == "insert" and isinstance(node, dict):
        new = {**node, "zz_extra": value}
    elif action == "delete" and path:
        doc = copy.deepcopy(doc)
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        return doc
    else:
        return doc
    if not path:
        return new
    doc = copy.deepcopy(doc)
    _get(doc, path[:-1])[path[-1]] = new
    return doc


def _layers(blob: bytes) -> list[dict]:
    """The headers of a message and of the messages nested in it (a protocol message carries its
    payload, itself a wire message, as its one array ``payload``)."""
    out = []
    while True:
        header, _, body = _split(blob)
        out.append(header)
        if [a["name"] for a in header["arrays"]] != ["payload"] or not body.startswith(MAGIC):
            return out
        blob = body


def _apply(blob: bytes, edits) -> bytes:
    """``blob`` with each ``(layer, path, action, value)`` edit applied to that layer's header
    (the layers around it re-framed, their payload lengths fixed)."""
    header, version, body = _split(blob)
    mine = [e for e in edits if e[0] == 0]
    deeper = [(e[0] - 1, *e[1:]) for e in edits if e[0] > 0]
    if deeper:
        body = _apply(body, deeper)
        header = copy.deepcopy(header)
        header["arrays"][0]["shape"] = [len(body)]
    doc = header
    for _, path, action, value in mine:
        doc = _edit(doc, path, action, value)
    return _frame(_text(doc), body, version)


def _edit_sites(blob: bytes) -> list[tuple[int, tuple]]:
    return [(depth, path) for depth, header in enumerate(_layers(blob)) for path in _paths(header)]


def header_edits(valid: bytes, max_edits: int = 3):
    """One to ``max_edits`` random edits of the headers of ``valid`` (any layer), hostile values included."""
    sites = _edit_sites(valid)
    edit = st.builds(
        lambda site, action, value: (site[0], site[1], action, value),
        st.sampled_from(sites),
        st.sampled_from(["replace", "replace", "replace", "delete", "duplicate", "insert"]),
        hostile_values,
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def mutated(valid: bytes, max_edits: int = 3):
    """Bytes: ``valid`` with :func:`header_edits` applied."""
    return header_edits(valid, max_edits).map(lambda edits: _apply(valid, edits))


def grid(valid: bytes) -> list[bytes]:
    """Every field of every layer replaced by each of :data:`TYPED`, deleted, and (objects) with a key twice."""
    out, layers = [], _layers(valid)
    for depth, path in _edit_sites(valid):
        node = _get(layers[depth], path)
        out += [_apply(valid, [(depth, path, "replace", v)]) for v in TYPED]
        if path:
            out.append(_apply(valid, [(depth, path, "delete", None)]))
        if isinstance(node, dict) and node:
            out.append(_apply(valid, [(depth, path, "duplicate", list(node.values())[-1])]))
            out.append(_apply(valid, [(depth, path, "duplicate", "other")]))
    return out


def _spread(items: list, k: int) -> list:
    """``k`` items of ``items``, evenly spread over it."""
    assert len(items) >= k
    return [items[i * len(items) // k] for i in range(k)]


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
        lambda b, hlen, tail: _PREFIX.pack(MAGIC, 1, hlen if hlen is not None else len(b)) + b + tail,
        body,
        st.none() | st.integers(min_value=0, max_value=2**32 - 1),
        st.binary(max_size=64),
    )


# -- the fuzzer's own checks ---------------------------------------------------------------------------
def test_header_edits_write_what_json_dumps_will_not():
    """The edits do reach the parser as the hostile text intended."""
    valid = encode_request(FIT_RES, {"cid": "site0", "round": 1})
    assert b"9" * 5000 in _apply(valid, [(0, ("meta", "round"), "replace", HUGE)])
    assert b'"round":NaN' in _apply(valid, [(0, ("meta", "round"), "replace", Raw("NaN"))])
    assert b'"round":1,"round":1' in _apply(valid, [(0, ("meta",), "duplicate", 1)])
    for edits, reason in [
        ([(0, ("meta", "round"), "replace", HUGE)], "an integer of 5000 digits"),
        ([(0, ("meta", "round"), "replace", Raw("Infinity"))], "Infinity is not a number"),
        ([(0, ("meta", "round"), "replace", Raw("1e400"))], "beyond the float range"),
        ([(0, ("meta",), "duplicate", 2)], "key 'round' appears twice"),
        ([(0, ("meta", "round"), "replace", Raw("[" * 5000 + "]" * 5000))], "nested 5002 deep"),
    ]:
        with pytest.raises(MalformedMessageError, match=reason):
            decode_request(_apply(valid, edits))
    with pytest.raises(MalformedMessageError, match="nested 16777215 deep"):  # the largest header, all '['
        decode_request(_frame("[" * ((16 << 20) - 1), b""))
    nested = encode_request(FIT_RES, {}, encode_request("inner", {"x": 1}, encode_request("leaf", {"y": 2})))
    assert len(_layers(nested)) == 3
    edited = _apply(nested, [(2, ("meta", "y"), "replace", 5)])
    inner = decode_request(decode_request(edited).arrays["payload"].tobytes())
    assert decode_request(inner.arrays["payload"].tobytes()).meta == {"y": 5}


# -- SecureStateDict, EncryptedTensor, PackedSum ---------------------------------------------------------
@pytest.fixture(scope="module")
def keys():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True), generate_keypair(512, allow_insecure=True)


@pytest.fixture(scope="module")
def valid_ssd(keys):
    (pk, sk), _ = keys
    state = {"weight": torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(1, 30), "bias": torch.zeros(1, dtype=torch.float64)}
    return SecureStateDict.encrypt(state, pk, weight=100, weight_bound=1000, coins=sk.coins()).to_bytes()


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
    refused = _fuzz(N_HEADER, mutated(valid_ssd), _parse_ssd(keys))
    assert refused > N_HEADER // 2


def test_ssd_fuzz_inputs_start_valid(keys, valid_ssd):
    """The mutations start from bytes the parser accepts, and it does refuse another key's bytes."""
    (pk, sk), (other_pk, _) = keys
    assert SecureStateDict.from_bytes(valid_ssd, public_key=pk).decrypt(sk)["bias"].tolist() == [0.0]
    with pytest.raises(KeyMismatchError):
        SecureStateDict.from_bytes(valid_ssd, public_key=other_pk)


def test_encrypted_tensor_and_packed_sum_header_edits(keys):
    (pk, sk), _ = keys
    tensor = EncryptedTensor.encrypt(torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64), pk).to_bytes()
    packed = PackedSum.encrypt(np.array([3.0, 1.5, -2.0]), pk, coins=sk.coins()).to_bytes()
    assert EncryptedTensor.from_bytes(tensor, public_key=pk).decrypt(sk).tolist() == [[0.5, -1.0], [2.0, 0.0]]
    assert PackedSum.from_bytes(packed, public_key=pk).decrypt(sk).tolist() == [3.0, 1.5, -2.0]
    for valid, parse in ((tensor, EncryptedTensor.from_bytes), (packed, PackedSum.from_bytes)):
        refused = _fuzz(N_CONTAINER_EDITS, st.one_of(mutated(valid), bit_flips(valid)), lambda b, parse=parse: parse(b, public_key=pk))
        assert refused > N_CONTAINER_EDITS // 2


# -- the runs the server-side and site-side tests use -----------------------------------------------------
_MODES = {
    "plain": dict(mode="plain"),
    "he-clients": dict(mode="he", key_holder="clients"),
    "he-server": dict(mode="he", key_holder="server", clip_norm=None),
}


def _tiny_dataset() -> Dataset:
    """120 rows of 4 features: a round with the server-held key costs milliseconds, not seconds."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4)) * [1.0, 2.0, 0.5, 3.0] + [0.0, 1.0, -1.0, 5.0]
    y = (X[:, 0] - 0.5 * X[:, 2] + 0.3 * rng.normal(size=120) > 0).astype(np.int64)
    return Dataset(X, y, ["a", "b", "c", "d"], "label")


def _build(mode: str):
    # with the server's key, one product per step so that the round also has refresh traffic to edit
    per_step = {"hem_steps_per_product": 1} if mode == "he-server" else {}
    cfg = TrainConfig(rounds=1, key_bits=512, extra={"allow_insecure_keys": True, **per_step}, **_MODES[mode])
    return build(cfg, dataset=_tiny_dataset())


class Tap:
    """The simulation's transport, with site ``victim``'s traffic recorded and, optionally, one of its
    replies (the ``target``-th it sends to a statistics, fit, refresh or evaluation request: secure aggregation's
    steps are not counted) passed through ``edit``."""

    def __init__(self, inner, victim: str = "site0") -> None:
        self.inner, self.victim = inner, victim
        self.client_ids = inner.client_ids
        self.log: list[tuple[str, bytes, bytes]] = []  # (client, request, reply), every client
        self.edit, self.target, self.sent = None, None, 0
        self.on_request = None  # called as on_request(cid, request) before each request is delivered

    bytes_up = property(lambda self: self.inner.bytes_up)
    bytes_down = property(lambda self: self.inner.bytes_down)

    def send(self, cid: str, request: bytes) -> bytes:
        if self.on_request is not None:
            self.on_request(cid, request)
        reply = self.inner.send(cid, request)
        self.log.append((cid, request, reply))
        if cid == self.victim and _kind(request) in ("stats_ins", "fit_ins", "refresh_ins", "evaluate_ins"):
            if self.edit is not None and self.sent == self.target:
                reply = self.edit(reply)
            self.sent += 1
        return reply


def _kind(blob: bytes) -> str:
    return decode_request(blob).kind


class Case:
    """One mode's run: set up, one round played with site0's traffic recorded, then reset to the
    start of round 1 whenever asked (every site's state and the global model put back)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sim = sim = _build(mode)
        self.server = sim.server
        self.tap = Tap(sim.transport)
        self.server.transport = self.tap
        self.server.setup()
        self.start = self.server.exchange.global_checkpoint()
        self.site_state = [self._site_snapshot(c) for c in sim.clients]
        #: request kind -> site0's secure-aggregation state just before it first answered one
        self.secagg_before: dict[str, object] = {}
        site0 = sim.clients[0].exchange

        def keep(cid, request):
            if cid == "site0" and hasattr(site0, "secagg"):
                self.secagg_before.setdefault(_kind(request), copy.deepcopy(site0.secagg))

        self.tap.on_request = keep
        self.result = self.server.run_round(1)
        self.tap.on_request = None
        self.everyone = list(self.tap.log)
        self.log = [(req, rep) for cid, req, rep in self.everyone if cid == "site0"]
        self.replies = {_kind(rep): rep for _, rep in self.log}  # site0's last of each kind
        self.requests = {_kind(req): req for req, _ in self.log}
        self.round_replies = [rep for req, rep in self.log if _kind(req) in ("fit_ins", "refresh_ins", "evaluate_ins")]
        self.full_model = self.model()
        self.reset()
        self.tap.inner.fail = {"site0"}
        self.without_site0 = self.server.run_round(1)
        self.absent_model = self.model()
        self.reset()

    @staticmethod
    def _site_snapshot(client) -> dict:
        out = {"standardizer": client.standardizer, "X": client.X, "X_test": client.X_test}
        ex = client.exchange
        if hasattr(ex, "masker"):  # agree() rebinds the seeds, so a shallow copy keeps them
            out.update(public_key=ex.public_key, masker=copy.copy(ex.masker), secagg=copy.deepcopy(ex.secagg))
        return out

    def reset(self) -> None:
        server = self.server
        server.exchange.restore_global(self.start)
        server.round, server.holders = 0, {}
        self.tap.inner.fail = set()
        self.tap.edit, self.tap.target, self.tap.sent, self.tap.log = None, None, 0, []
        for client, snap in zip(self.sim.clients, self.site_state):
            client.last_round, client.asked_global = (0, 0), None
            client.standardizer, client.X, client.X_test = snap["standardizer"], snap["X"], snap["X_test"]
            client.remember_global(b"")
            if "masker" in snap:
                client.exchange.public_key, client.exchange.masker = snap["public_key"], copy.copy(snap["masker"])
                client.exchange.secagg = copy.deepcopy(snap["secagg"])  # as before round 1: nothing uploaded
                client.restore_site_state({"x25519": b"", "continuation": b""})

    def model(self) -> dict[str, torch.Tensor]:
        """The global model as plaintext (with the sites' key, decrypted with it)."""
        state = self.server.global_state()
        if state is None:  # after round 1, as a site checks and reads it
            state = self.sim.clients[1].exchange.read_global_after(self.server.exchange.global_payload(), self.server.round)
        return {k: v.clone() for k, v in state.items()}

    def fit_context(self) -> dict:
        return dict(server_round=1, attempt=1, participants=self.tap.client_ids)


@pytest.fixture(scope="module", params=MODES)
def case(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return Case(request.param)


def _read_fit(case: Case):
    def target(blob):
        msg, update = case.server.read_fit_reply("site0", blob, **case.fit_context())
        assert msg.kind == "fit_res" and msg.meta.get("cid", "site0") == "site0" and update is not None

    return target


def test_the_runs_are_what_the_fuzzing_edits(case):
    """The recorded replies are accepted as they stand; site0 took part; leaving it out changes the model."""
    server = case.server
    assert case.result["clients"] == ["site0", "site1", "site2"] and case.result["rejected"] == {}
    assert case.without_site0["clients"] == ["site1", "site2"] and case.without_site0["dropped"] == ["site0"]
    assert any((case.full_model[k] - case.absent_model[k]).abs().max() > 1e-6 for k in case.full_model)
    _read_fit(case)(case.replies["fit_res"])
    assert server.read_stats_reply("site0", case.replies["stats_res"]).kind == "stats_res"
    with pytest.raises(MalformedMessageError, match="signed as client 'site0'"):
        server.read_fit_reply("site1", case.replies["fit_res"], **case.fit_context())
    expected = {"plain": ["fit_res"], "he-clients": ["fit_res", "evaluate_res"], "he-server": ["refresh_req", "fit_res"]}
    assert [_kind(r) for r in case.round_replies] == expected[case.mode]


# -- the server's handling of each reply ----------------------------------------------------------------
def test_server_fit_reply_bit_flips_and_cuts(case):
    valid = case.replies["fit_res"]
    _fuzz(N_SERVER_FLIPS, st.one_of(bit_flips(valid), cuts(valid)), _read_fit(case))


def test_server_fit_reply_header_edits(case):
    refused = _fuzz(N_SERVER_HEADER, mutated(case.replies["fit_res"]), _read_fit(case))
    assert refused > N_SERVER_HEADER // 2


def test_server_fit_reply_every_field_every_type(case):
    """Every field of the reply and of the update inside it, replaced by a value of each JSON type."""
    inputs = grid(case.replies["fit_res"])
    tried, refused = _each(inputs, _read_fit(case))
    assert tried >= N_SERVER_GRID[case.mode] and refused > tried // 2


def test_server_fit_reply_wrong_kinds_and_garbage(case):
    envelope, _, body = _split(case.replies["fit_res"])
    kinds = st.sampled_from(["stats_res", "evaluate_res", "fit_ins", "standardize_res", "hem_keys_res", "plain_state"]) | st.text(max_size=12)
    wrong_kind = st.builds(lambda k: _join(dict(envelope, kind=k), body), kinds)
    _fuzz(N_SERVER_KINDS, st.one_of(wrong_kind, st.binary(max_size=512), framed_garbage()), _read_fit(case))


def test_server_stats_reply_fuzz(case):
    server, valid = case.server, case.replies["stats_res"]
    refused = _fuzz(N_STATS, st.one_of(bit_flips(valid), cuts(valid), mutated(valid)), lambda blob: server.read_stats_reply("site0", blob))
    assert refused > N_STATS // 2


def test_setup_with_edited_statistics(case):
    """``Server.standardize`` (part of ``setup``) with site0's statistics edited: standardisation needs
    every site, so a refused reply stops it with ``ProtocolError``, naming the site; nothing else escapes."""
    server, tap = case.server, case.tap
    outcomes = {"refused": 0, "accepted": 0}

    def target(edits):
        case.reset()
        tap.edit, tap.target = (lambda reply: _apply(reply, edits)), 0  # site0's first reply: its statistics
        try:
            server.standardize()
            outcomes["accepted"] += 1
        except ProtocolError as e:
            assert "site0" in str(e) or "statistics" in str(e)
            outcomes["refused"] += 1

    _fuzz(N_SETUP, header_edits(case.replies["stats_res"], 2), target, declared=())
    assert sum(outcomes.values()) >= N_SETUP and outcomes["refused"] > N_SETUP // 2, outcomes
    case.reset()


def test_server_follow_up_requests_and_evaluation_replies(case):
    """``global_req`` (every mode), ``refresh_req`` (server-held key) and ``evaluate_res`` (sites' key)."""
    server = case.server
    full = case.requests["fit_ins"]
    global_req = encode_request(GLOBAL_REQ, {"cid": "site0", "round": 1, "attempt": 1})
    targets = [
        (global_req, lambda b: server.answer_global_request("site0", b, full, server_round=1, attempt=1, already=False)),
    ]
    if "refresh_req" in case.replies:
        targets.append((case.replies["refresh_req"], lambda b: server.answer_follow_up("site0", b, server_round=1, attempt=1, seq=1)))
    if "evaluate_res" in case.replies:
        targets.append((case.replies["evaluate_res"], lambda b: server.read_evaluate_reply("site0", b)))
    for valid, target in targets:
        target(valid)  # the unedited request is served
        n = N_FOLLOW_UPS // len(targets)
        _fuzz(n // 2, st.one_of(mutated(valid), bit_flips(valid), cuts(valid)), target)
        tried, refused = _each(_spread(grid(valid), n - n // 2), target)
        assert tried == n - n // 2 and refused > tried // 2
    with pytest.raises(MalformedMessageError, match="stale or replayed request for the model for round True attempt 1"):
        server.answer_global_request("site0", _apply(global_req, [(0, ("meta", "round"), "replace", True)]), full, server_round=1, attempt=1, already=False)
    if "evaluate_res" in case.replies:  # through Server.evaluate: the refused counts leave site0 out
        case.reset()
        case.tap.inner.fail = {"site0"}
        expected = server.evaluate()
        case.tap.inner.fail = set()
        case.tap.edit, case.tap.target, case.tap.sent = (lambda reply: _apply(reply, [(1, ("meta", "dtypes", "n"), "replace", HUGE)])), 0, 0
        assert server.evaluate() == expected and "site0" not in server.holders
        case.reset()


# -- whole rounds, with one site's reply edited ---------------------------------------------------------------
def _close(a: dict, b: dict, tol: float) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=0, atol=tol) if tol else torch.equal(a[k], b[k]) for k in a)


def test_run_round_completes_without_the_site_whose_reply_is_edited(case):
    """Each input edits one of site0's replies in round 1 (any layer of any of its replies: a fit
    result, a refresh request, an evaluation), then the round runs. A refused reply leaves site0 out
    (``rejected`` and ``dropped``) and the model is the one of the round without site0 (with the
    server-held key to 1e-8: the re-run's blinded refreshes round differently); a refused evaluation
    leaves the model as with site0. Nothing else escapes ``run_round``."""
    server, tap = case.server, case.tap
    replies = case.round_replies
    tol = 1e-8 if case.mode == "he-server" else 0.0
    outcomes = {"refused": 0, "accepted": 0, "evaluation refused": 0}
    inputs = st.sampled_from(range(len(replies))).flatmap(lambda k: header_edits(replies[k], 2).map(lambda e: (k, e)))

    def target(arg):
        k, edits = arg
        case.reset()
        tap.edit, tap.target = (lambda reply: _apply(reply, edits)), k
        result = server.run_round(1)
        model = case.model()
        if _kind(replies[k]) == "evaluate_res":
            assert result["clients"] == ["site0", "site1", "site2"] and _close(model, case.full_model, 0.0)
            outcomes["evaluation refused" if "site0" not in server.holders else "accepted"] += 1
        elif "site0" in result["rejected"]:
            assert result["clients"] == ["site1", "site2"] and result["dropped"] == ["site0"]
            assert _close(model, case.absent_model, tol), result
            outcomes["refused"] += 1
        else:
            assert result["clients"] == ["site0", "site1", "site2"] and result["rejected"] == {}
            outcomes["accepted"] += 1

    _fuzz(N_LOOP[case.mode], inputs, target, declared=())
    assert sum(outcomes.values()) >= N_LOOP[case.mode]
    assert outcomes["refused"] > N_LOOP[case.mode] // 3, outcomes
    case.reset()


# -- a site reading the server's requests -------------------------------------------------------------------------
def _reset_before(case: Case, kind: str) -> None:
    """Everything back to the start of round 1, and site0's secure-aggregation state to what it was
    just before it answered its first ``kind`` request."""
    case.reset()
    if kind in case.secagg_before:
        case.sim.clients[0].exchange.secagg = copy.deepcopy(case.secagg_before[kind])


def _site_targets(case: Case):
    """``(request kind, valid request, prepare)``: each request site0 answered, and how to put site0
    back in the state it answered it from."""
    client = case.sim.clients[0]
    out = []
    for kind, request in case.requests.items():
        prepare = functools.partial(_reset_before, case, kind)
        if kind == "refresh_ins":
            _reset_before(case, "fit_ins")
            fit = case.requests["fit_ins"]
            client.handle(fit)  # answers with its refresh_req and keeps the continuation
            saved = client.site_state()

            def prepare(saved=saved):
                _reset_before(case, "fit_ins")
                client.last_round = (1, 1)
                client.restore_site_state(saved)

        out.append((kind, request, prepare))
    return out


def test_site_handles_edited_requests(case):
    """``Client.handle`` (HEM's client with the server-held key) on edited requests of every kind it
    answers: only the declared errors (a protocol refusal included) escape."""
    client = case.sim.clients[0]
    targets = _site_targets(case)
    assert {k for k, _, _ in targets} >= {"stats_ins", "standardize_ins", "fit_ins"}
    for i, (kind, valid, prepare) in enumerate(targets):
        prepare()
        assert isinstance(client.handle(valid), bytes)  # the unedited request is answered

        def target(blob, prepare=prepare):
            prepare()
            client.handle(blob)

        n = N_SITE // len(targets) + (i < N_SITE % len(targets))  # N_SITE in all
        _fuzz(n, st.one_of(mutated(valid), bit_flips(valid), cuts(valid)), target, declared=SITE_DECLARED)
    case.reset()


def test_site_requests_every_field_every_type(case):
    client = case.sim.clients[0]
    tried = refused = 0
    for kind, valid, prepare in _site_targets(case):

        def target(blob, prepare=prepare):
            prepare()
            client.handle(blob)

        t, r = _each(grid(valid), target, declared=SITE_DECLARED)
        tried, refused = tried + t, refused + r
    assert tried >= N_SITE_GRID[case.mode] and refused > tried // 2
    case.reset()


def test_site_refuses_hostile_fit_settings_by_name(case):
    """What the fuzzing found: a proximal term or a round a site cannot train with, a model of other
    shapes, and (with the sites' key) an aggregate that does not decrypt."""
    client = case.sim.clients[0]
    fit = case.requests["fit_ins"]
    for edits, reason in [
        ([(0, ("meta", "config"), "replace", {"proximal_mu": "abc"})], "proximal_mu 'abc'"),
        ([(0, ("meta", "config"), "replace", {"proximal_mu": -1})], "proximal_mu -1"),
        ([(0, ("meta", "round"), "replace", -3)], "invalid round"),
        ([(0, ("meta", "round"), "replace", True)], "invalid round"),
        ([(0, ("meta", "round"), "replace", 2**40)], "invalid round"),
    ]:
        _reset_before(case, "fit_ins")
        with pytest.raises(MalformedMessageError, match=reason):
            client.handle(_apply(fit, edits))
    case.reset()


# -- checkpoints and key files ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_case():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = _build("he-clients")
    sim.server.setup()
    sim.server.run_round(1)
    return sim, checkpoint_of(sim, sim.config.to_dict()).to_bytes()


def _restore(sim):
    def target(blob):
        checkpoint = Checkpoint.from_bytes(blob)
        state = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            restore_checkpoint(sim, checkpoint)
        except ConfigError:
            pass
        finally:
            torch.set_rng_state(state[0])
            np.random.set_state(state[1])
            random.setstate(state[2])

    return target


def test_checkpoint_fuzz(checkpoint_case):
    """Checkpoint bytes edited, then (when parsed) restored into a run: ``MalformedMessageError`` from
    parsing, ``ConfigError`` from restoring, nothing else."""
    sim, valid = checkpoint_case
    _restore(sim)(valid)
    _fuzz(N_CHECKPOINT, st.one_of(mutated(valid), bit_flips(valid), cuts(valid)), _restore(sim))
    tried, refused = _each(grid(valid), _restore(sim))
    assert tried >= N_CHECKPOINT_GRID and refused > tried // 3


@pytest.fixture(scope="module")
def key_texts(keys, tmp_path_factory):
    (pk, sk), _ = keys
    folder = tmp_path_factory.mktemp("keys")
    pk.save(folder / "public.json")
    sk.save(folder / "private.json")
    return folder, (folder / "public.json").read_bytes(), (folder / "private.json").read_bytes()


def _load_key(folder):
    path = folder / "fuzzed.json"

    def target(raw: bytes):
        path.write_bytes(raw)
        for load in (load_public_key, load_private_key):
            try:
                load(path, allow_insecure=True)
            except MalformedMessageError:
                pass

    return target


def _key_edits(text: bytes):
    doc = json.loads(text)
    sites = list(_paths(doc))
    edit = st.builds(lambda path, action, value: (path, action, value), st.sampled_from(sites),
                     st.sampled_from(["replace", "replace", "delete", "duplicate", "insert"]), hostile_values)

    def apply(edits):
        out = doc
        for path, action, value in edits:
            out = _edit(out, path, action, value)
        return _text(out).encode("utf-8", "surrogatepass")

    return st.lists(edit, min_size=1, max_size=3).map(apply)


def test_key_files_fuzz(key_texts):
    """Key files edited (every field, each JSON type; hostile literals; random bytes and bit flips)."""
    folder, public, private = key_texts
    target = _load_key(folder)
    grid_tried = 0
    for valid, load in ((public, load_public_key), (private, load_private_key)):
        (folder / "valid.json").write_bytes(valid)
        assert load(folder / "valid.json", allow_insecure=True).fingerprint  # the unedited file loads
        _fuzz(N_KEY_FILES // 2, st.one_of(_key_edits(valid), bit_flips(valid), cuts(valid), st.binary(max_size=600)), target)
        doc = json.loads(valid)
        grid_inputs = [_text(_edit(doc, path, "replace", v)).encode("utf-8", "surrogatepass") for path in _paths(doc) for v in TYPED]
        tried, _ = _each(grid_inputs, target)
        grid_tried += tried
    assert grid_tried >= N_KEY_GRID
    with pytest.raises(MalformedMessageError, match="not a torchhefl key file .*an integer of 5000 digits"):
        (folder / "huge.json").write_bytes(public.replace(b'"version": 1', b'"version": ' + b"9" * 5000))
        load_public_key(folder / "huge.json", allow_insecure=True)


# -- Flower adapters -------------------------------------------------------------------------------------------------
def test_flower_adapters_fuzz(tmp_path):
    """What the Flower adapters read: a reply's record (``unpack``), the SuperNodes' hellos
    (``read_hellos``), and a site's ``Site.handle`` on edited requests."""
    flwr_app = pytest.importorskip("flwr.app")
    from torchhefl.flower.deployment import VOCABULARY_INS, DeploymentSettings, Site, read_hellos
    from torchhefl.flower.records import pack, unpack

    data = _tiny_dataset()
    csv = tmp_path / "site.csv"
    csv.write_text("a,b,c,d,label\n" + "".join(",".join(f"{v:.6f}" for v in x) + f",{t}\n" for x, t in zip(data.X, data.y)))
    settings_ = DeploymentSettings.from_run_config({"clients": 3, "mode": "plain"})
    sites = [Site(settings_.config, {"partition-id": i, "num-partitions": 3, "data": str(csv), "label": "label"}) for i in range(3)]
    hellos = {10 + i: s.hello() for i, s in enumerate(sites)}
    assert read_hellos(settings_.config, hellos).nodes == {"site0": 10, "site1": 11, "site2": 12}
    values = [None, True, 0, -1, 2**62, 1.5, "", "x", "zz", b"\x00", [1, 2], ["a"]]
    fields = ["partition-id", "num-partitions", "num-features", "public-key", "table"]

    def hello_target(arg):
        field, value = arg
        record = dict(hellos[10].config_records["torchhefl.hello"])
        if value is None:
            record.pop(field)
        else:
            record[field] = value
        content = flwr_app.RecordDict({"torchhefl.hello": flwr_app.ConfigRecord(record)})
        try:
            read_hellos(settings_.config, {10: content, 11: hellos[11], 12: hellos[12]})
        except (ConfigError, ProtocolError):
            pass

    n_hello = len(fields) * len(values)
    tried, _ = _each([(f, v) for f in fields for v in values], hello_target)
    assert tried == n_hello

    def unpack_target(arg):
        dtype, stype, blob, shape = arg
        array = flwr_app.Array(dtype=dtype, shape=shape, stype=stype, data=blob)
        unpack(flwr_app.RecordDict({"torchhefl": flwr_app.ArrayRecord(array_dict={"message": array})}))

    records = st.tuples(
        st.sampled_from(["torchhefl.wire", "float32", ""]), st.sampled_from(["torchhefl.wire/v1", "numpy.ndarray", ""]),
        st.binary(max_size=64), st.lists(st.integers(0, 70), max_size=2).map(tuple),
    )
    _fuzz(100, records, unpack_target)
    assert unpack(pack(b"abc")) == b"abc"

    sites[0].handle(encode_request(VOCABULARY_INS, {"vocabulary": {}}))  # the table has no text column
    stats = encode_request(STATS_INS, {})
    sites[0].handle(stats)
    _fuzz(N_FLOWER - 100 - n_hello, st.one_of(mutated(stats), bit_flips(stats), st.binary(max_size=64)), sites[0].handle, declared=SITE_DECLARED)
