"""A curious server reads a site's size off its fit reply: timings, step or refresh counts, lengths.

The server knows everything public (the seed, the run config, the batch size, the epochs), so a
site's number of local steps, ``epochs * ceil(rows / batch_size)``, would give away its row count
to within a batch. The attack compares what a site with 100 rows and one with 300 rows send in
answer to the same fit request, in every mode. It fails if the reply's metadata has the same keys,
none of them a timing or a count, and the reply has the same length (the payload excluded only in
plain mode, whose payload carries the sample count by design; the training loss, whose value the
server reads by design in plain mode and with the sites' key, is set aside as a value).

What the server still observes, and this test pins down so that nobody claims otherwise: how long
each reply takes, and with the server's key the number of refresh requests a site sends, which
grows with its local steps (each request is the same size).
"""

import json

import numpy as np
import pytest

from torchhefl.data import Dataset
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.messages import decode_request, encode_request, payload_of
from torchhefl.federated.simulation import build

#: every key a fit reply may carry (a new one must first be shown not to depend on the site's data)
_ALLOWED = {"cid", "round", "attempt", "train_loss", "epsilon"}

MODES = {
    "plain": dict(mode="plain"),
    "plain-dp": dict(mode="plain", epsilon=1.0, clip_norm=1.0),
    "he-clients": dict(mode="he", key_holder="clients"),
    "he-server": dict(mode="he", key_holder="server", clip_norm=None),
}


def _dataset(rows_per_site: int) -> Dataset:
    """Two sites' worth of rows after the 80/20 split: ``rows_per_site`` training rows each."""
    n = rows_per_site * 2 * 5 // 4
    rng = np.random.default_rng(7)
    X = rng.normal(size=(n, 4))
    y = (X @ np.array([1.0, -0.5, 0.25, 0.0]) + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return Dataset(X, y, [f"x{i}" for i in range(4)], "label")


class _Recording:
    """Passes each request to the real client and keeps its replies by kind."""

    def __init__(self, client, replies: list):
        self.client, self.replies = client, replies

    def handle(self, request: bytes) -> bytes:
        reply = self.client.handle(request)
        self.replies.append(reply)
        return reply


def _site0_replies(mode: str, rows: int, **extra) -> list[bytes]:
    config = TrainConfig(**MODES[mode], rounds=1, clients=2, key_bits=512, seed=0, extra={"allow_insecure_keys": True, **extra})
    sim = build(config, dataset=_dataset(rows))
    assert [c.num_examples for c in sim.clients] == [rows, rows]
    replies: list[bytes] = []
    sim.transport.clients = {**sim.transport.clients, "site0": _Recording(sim.clients[0], replies)}
    sim.server.setup()
    replies.clear()  # the round's replies only
    sim.server.run_round(1)
    return replies


def _by_kind(replies: list[bytes], kind: str) -> list[bytes]:
    return [r for r in replies if decode_request(r).kind == kind]


def _loss_set_aside(reply: bytes, *, with_payload: bool) -> bytes:
    """The reply re-encoded with the training loss at a fixed value (and without the payload)."""
    msg = decode_request(reply)
    meta = {**msg.meta, "train_loss": 0.0} if "train_loss" in msg.meta else msg.meta
    return encode_request(msg.kind, meta, payload_of(msg)) if with_payload else encode_request(msg.kind, meta)


@pytest.mark.parametrize("mode", list(MODES))
def test_the_fit_reply_does_not_depend_on_the_row_count(mode):
    small, large = _site0_replies(mode, 100), _site0_replies(mode, 300)
    (fit_small,), (fit_large,) = _by_kind(small, "fit_res"), _by_kind(large, "fit_res")
    meta_small, meta_large = decode_request(fit_small).meta, decode_request(fit_large).meta
    assert set(meta_small) == set(meta_large)
    assert set(meta_small) <= _ALLOWED, sorted(meta_small)  # no seconds, refreshes or step counts
    for key in set(meta_small) - {"train_loss"}:
        assert json.dumps(meta_small[key]) == json.dumps(meta_large[key]), key
    with_payload = mode != "plain" and mode != "plain-dp"
    assert len(_loss_set_aside(fit_small, with_payload=with_payload)) == len(_loss_set_aside(fit_large, with_payload=with_payload))
    if mode == "he-server":  # no loss at all: the whole reply, byte for byte in length
        assert "train_loss" not in meta_small and len(fit_small) == len(fit_large)


def test_with_the_server_key_a_round_is_one_product_and_no_refresh_whatever_the_rows():
    """A round's steps compose into one product that lands at the upload scale: a 100-row and a
    300-row site send the server the same messages, no refresh request at all."""
    small, large = _site0_replies("he-server", 100), _site0_replies("he-server", 300)
    assert _by_kind(small, "refresh_req") == [] == _by_kind(large, "refresh_req")
    assert [decode_request(r).kind for r in small] == [decode_request(r).kind for r in large]


def test_the_control_one_product_per_step_makes_the_refresh_count_follow_the_rows():
    # each refresh request is the same size whatever the site's rows; their number is not, and
    # the server serves (so counts) every one: where a round needs more products than a key has
    # room for (here forced: one product per step), the threat table's row says so
    small = _site0_replies("he-server", 100, hem_steps_per_product=1)
    large = _site0_replies("he-server", 300, hem_steps_per_product=1)
    req_small, req_large = _by_kind(small, "refresh_req"), _by_kind(large, "refresh_req")
    assert len({len(r) for r in req_small + req_large}) == 1
    assert len(req_large) > len(req_small) >= 1
