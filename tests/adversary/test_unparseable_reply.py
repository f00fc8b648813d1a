"""The attack: one site answers with a reply the server cannot parse, to stop the whole run.

A malicious site (a real :class:`~torchhefl.federated.Client` whose fit replies are rewritten) puts
in its reply's JSON header what Python's ``json`` reads but chokes on afterwards, or what no writer
of torchhefl produces: an integer of 5,000 digits (Python's int-string limit raised a plain
``ValueError`` out of ``Server.run_round``), ``NaN``, ``1e400``, a key twice, nesting 100,000 deep,
a 5,000-digit array size, or any of these in the update the reply carries. The attack fails when
every round completes without that site, the reason is logged in ``rejected``, and the model is the
one the other sites train without it (with the server-held key to 1e-8: the re-run's blinded
refreshes round differently).
"""

import re
import struct
import warnings

import numpy as np
import pytest
import torch

from torchhefl.data import Dataset
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import decode_request
from torchhefl.secure import InsecureKeyWarning

_PREFIX = struct.Struct("<8sHI")
HUGE = "9" * 5000
MODES = {
    "plain": dict(mode="plain"),
    "he-clients": dict(mode="he", key_holder="clients"),
    "he-server": dict(mode="he", key_holder="server", clip_norm=None),
}
#: (layer: 0 the reply, 1 the update inside it; pattern; replacement; the reason the server gives)
ATTACKS = {
    "a 5,000-digit round": (0, r'"round":\d+', f'"round":{HUGE}', "an integer of 5000 digits"),
    "NaN as the round": (0, r'"round":\d+', '"round":NaN', "NaN is not a number JSON allows"),
    "1e400 as the attempt": (0, r'"attempt":\d+', '"attempt":1e400', "the number '1e400' is beyond the float range"),
    "the round twice": (0, r'"round":\d+', '"round":0,"round":0', "key 'round' appears twice"),
    "nesting 100,000 deep": (0, r'"cid":', '"deep":' + "[" * 100_000 + "]" * 100_000 + ',"cid":', "nested 100002 deep"),
    "a 5,000-digit array size": (0, r'"shape":\[\d+\]', f'"shape":[{HUGE}]', "an integer of 5000 digits"),
    "a 5,000-digit number in the update": (1, r'"meta":\{', f'"meta":{{"x":{HUGE},', "an integer of 5000 digits"),
    "Infinity in the update": (1, r'"meta":\{', '"meta":{"x":-Infinity,', "-Infinity is not a number JSON allows"),
}


def _dataset() -> Dataset:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 4)) * [1.0, 2.0, 0.5, 3.0]
    y = (X[:, 0] - 0.5 * X[:, 2] + 0.3 * rng.normal(size=120) > 0).astype(np.int64)
    return Dataset(X, y, ["a", "b", "c", "d"], "label")


def _splice(blob: bytes, layer: int, pattern: str, replacement: str) -> bytes:
    """``blob`` with ``pattern`` replaced (once) in the JSON header of its ``layer``-th nested message."""
    magic, version, hlen = _PREFIX.unpack_from(blob)
    text, body = blob[_PREFIX.size : _PREFIX.size + hlen].decode(), blob[_PREFIX.size + hlen :]
    if layer:
        body = _splice(body, layer - 1, pattern, replacement)
        text = re.sub(r'"shape":\[\d+\]', f'"shape":[{len(body)}]', text, count=1)
    new, n = re.subn(pattern, lambda m: replacement, text, count=1)
    assert n == 1, (pattern, text[:200])
    raw = new.encode()
    return _PREFIX.pack(magic, version, len(raw)) + raw + body


class HostileSite:
    """A real client whose fit replies carry the attack."""

    def __init__(self, client, attack) -> None:
        self.client, self.attack = client, attack

    def handle(self, request: bytes) -> bytes:
        reply = self.client.handle(request)
        if decode_request(reply).kind == "fit_res":
            reply = _splice(reply, *self.attack[:3])
        return reply


def _run(mode: str, attack=None, rounds: int = 2):
    cfg = TrainConfig(rounds=rounds, key_bits=512, extra={"allow_insecure_keys": True}, **MODES[mode])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(cfg, dataset=_dataset())
    if attack is not None:
        sim.transport.clients["site0"] = HostileSite(sim.clients[0], attack)
    sim.server.setup()
    if attack is None:
        sim.transport.fail = {"site0"}  # the run had site0 never answered a round
    results = [sim.server.run_round(r) for r in range(1, rounds + 1)]
    return results, sim.final_state()


@pytest.fixture(scope="module")
def without_site0():
    return {mode: _run(mode) for mode in MODES}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_unparseable_reply_leaves_out_only_its_sender(mode, name, without_site0):
    results, model = _run(mode, ATTACKS[name])
    expected_results, expected = without_site0[mode]
    for result, honest in zip(results, expected_results):
        assert result["clients"] == ["site1", "site2"] == honest["clients"]
        assert result["dropped"] == ["site0"]
        assert re.search(ATTACKS[name][3], result["rejected"]["site0"]), result["rejected"]
    tol = 1e-8 if mode == "he-server" else 0.0
    for k in expected:
        assert torch.allclose(model[k], expected[k], rtol=0, atol=tol), (k, model[k], expected[k])
