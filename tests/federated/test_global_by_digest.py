"""A fit request names the global model by its digest when the site received it in the evaluation
just before; a site that no longer holds it asks for it (``global_req``) and gets it once."""

import pytest
import torch

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import FIT_INS, decode_request, encode_request

pytestmark = pytest.mark.filterwarnings("ignore::torchhefl.secure.keys.InsecureKeyWarning")


def _config(**overrides) -> TrainConfig:
    base = dict(mode="he", key_holder="clients", rounds=3, key_bits=512, extra={"allow_insecure_keys": True})
    base.update(overrides)
    return TrainConfig(**base)


class _Log:
    """Wraps a client and logs ``(kind, round, carries the model)`` of every request and reply."""

    def __init__(self, client):
        self.client, self.requests, self.replies = client, [], []

    def handle(self, request: bytes) -> bytes:
        msg = decode_request(request)
        self.requests.append((msg.kind, msg.meta.get("round"), "payload" in msg.arrays))
        reply = self.client.handle(request)
        self.replies.append(decode_request(reply).kind)
        return reply


def _train(cfg, before_round=None, wrap=_Log):
    sim = build(cfg)
    logs = {}
    for client in sim.clients:
        logs[client.cid] = sim.transport.clients[client.cid] = wrap(client)
    sim.server.setup()
    results = []
    for r in range(1, cfg.rounds + 1):
        if before_round is not None:
            before_round(sim, r)
        results.append(sim.server.run_round(r))
    return sim, results, logs


def _same_models(a, b):
    sa, sb = a.final_state(), b.final_state()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fit_requests_after_an_evaluation_name_the_model_by_its_digest():
    sim, results, logs = _train(_config())
    for log in logs.values():
        fits = [(r, carries) for kind, r, carries in log.requests if kind == "fit_ins"]
        assert fits == [(1, True), (2, False), (3, False)]  # round 1 follows no evaluation
        assert all(carries for kind, _, carries in log.requests if kind == "evaluate_ins")
        assert "global_req" not in log.replies
    # the same training as when every fit request carries the model, for about half the bytes down
    full, full_results, _ = _train(_config(), before_round=lambda sim, r: sim.server.holders.clear())
    _same_models(sim, full)
    assert [r["test_loss"] for r in results] == [r["test_loss"] for r in full_results]
    assert results[2]["bytes_down"] < 0.6 * full_results[2]["bytes_down"]


def _forget(site: int, rnd: int):
    def before_round(sim, r):
        if r == rnd:
            sim.clients[site]._global = None  # e.g. the site restarted since it evaluated
    return before_round


def test_a_site_that_lost_the_model_asks_for_it_and_trains_the_same():
    sim, results, logs = _train(_config(), before_round=_forget(1, 2))
    assert [r["clients"] for r in results] == [["site0", "site1", "site2"]] * 3 and results[1]["rejected"] == {}
    round2 = [(kind, carries) for kind, r, carries in logs["site1"].requests if r == 2 and kind == "fit_ins"]
    assert round2 == [("fit_ins", False), ("fit_ins", True)] and logs["site1"].replies.count("global_req") == 1
    reference, _, _ = _train(_config())
    _same_models(sim, reference)


class _Tampered:
    """Wraps a client whose ``global_req`` replies go through ``edit(reply, client)``."""

    def __init__(self, client, edit):
        self.client, self.edit, self.cid = client, edit, client.cid

    def handle(self, request: bytes) -> bytes:
        reply = self.client.handle(request)
        return self.edit(reply, self.client) if decode_request(reply).kind == "global_req" else reply


def _rewrap(reply, **meta):
    msg = decode_request(reply)
    return encode_request(msg.kind, dict(msg.meta, **meta))


class _AsksTwice:
    """Wraps a client that answers the model it asked for with a second request for it."""

    def __init__(self, client):
        self.client, self.cid, self.asked = client, client.cid, None

    def handle(self, request: bytes) -> bytes:
        if self.asked is not None and decode_request(request).kind == "fit_ins":
            again, self.asked = self.asked, None
            return again
        reply = self.client.handle(request)
        if decode_request(reply).kind == "global_req":
            self.asked = reply
        return reply


@pytest.mark.parametrize(
    "wrap, reason",
    [
        pytest.param(lambda c: _Tampered(c, lambda r, c: _rewrap(r, round=1)), "stale or replayed request for the model", id="stale round"),
        pytest.param(lambda c: _Tampered(c, lambda r, c: _rewrap(r, attempt=7)), "stale or replayed request for the model", id="other attempt"),
        pytest.param(lambda c: _Tampered(c, lambda r, c: _rewrap(r, cid="site2")), "signed as client 'site2'", id="another sender"),
        pytest.param(lambda c: _Tampered(c, lambda r, c: r[:-9]), "message truncated", id="truncated"),
        pytest.param(_AsksTwice, "asked for the global model twice", id="asks twice"),
    ],
)
def test_a_refused_request_for_the_model_excludes_only_its_sender(wrap, reason):
    _, results, _ = _train(_config(), before_round=_forget(1, 2), wrap=lambda c: wrap(c) if c.cid == "site1" else c)
    assert results[1]["dropped"] == ["site1"] and results[1]["clients"] == ["site0", "site2"]
    assert reason in results[1]["rejected"]["site1"], results[1]["rejected"]
    assert results[2]["clients"] == ["site0", "site1", "site2"]  # it evaluated round 2's model, so it holds it


def test_a_fit_request_needs_the_model_or_its_digest():
    sim = build(_config(rounds=1))
    sim.server.setup()
    request = encode_request(FIT_INS, {"round": 1, "attempt": 1, "participants": ["site0"], "config": {}})
    with pytest.raises(MalformedMessageError, match="neither a global model nor its digest"):
        sim.clients[0].handle(request)


def test_the_model_a_site_asked_for_is_accepted_once():
    sim, results, _ = _train(_config(rounds=2), before_round=_forget(0, 2))
    assert results[1]["clients"] == ["site0", "site1", "site2"]
    client = sim.clients[0]
    full = encode_request(
        FIT_INS, {"round": 2, "attempt": 1, "participants": ["site0", "site1", "site2"], "config": {}},
        sim.server.exchange.global_payload(),
    )
    with pytest.raises(MalformedMessageError, match="stale round 2"):
        client.handle(full)
