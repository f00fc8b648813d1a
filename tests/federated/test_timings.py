"""Where a round's seconds and refresh counts come from: the server's own measurements, and in the
simulation the sites' own figures read from the Client objects (never from the wire)."""

import csv

import pytest

from torchhefl.federated.config import TrainConfig
from torchhefl.federated.messages import decode_request
from torchhefl.federated.server_key.constants import REFRESH_REQ
from torchhefl.federated.simulation import build, run

SMALL_KEY = dict(key_bits=512, extra={"allow_insecure_keys": True})


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{"rounds": 1, "clients": 3, **SMALL_KEY, **kw})


def _spy_timings(sim) -> list[dict]:
    """Wrap each client's take_timings to keep what it hands the simulation."""
    taken = []
    for client in sim.clients:
        real = client.take_timings

        def take(real=real):
            out = real()
            taken.append(out)
            return out

        client.take_timings = take
    return taken


@pytest.mark.parametrize(
    "mode", [dict(mode="plain"), dict(mode="he"), dict(mode="he", key_holder="server", clip_norm=None)],
    ids=["plain", "he-clients", "he-server"],
)
def test_the_simulation_adds_the_sites_own_seconds(mode):
    sim = build(_config(**mode))
    sim.server.setup()
    taken = _spy_timings(sim)
    result = sim.run_round(1)
    assert len(taken) == 3 and all(set(t) >= {"train", "encrypt"} for t in taken)
    assert result["seconds"]["train"] == pytest.approx(sum(t["train"] for t in taken))
    assert result["seconds"]["train"] > 0
    assert "aggregate" in result["seconds"]  # the server's own phase
    assert all(c.timings == {} for c in sim.clients)  # taken once, not counted twice
    # the server on its own knows no site's training time: nothing on the wire tells it
    assert "train" not in sim.server.run_round(2)["seconds"]


def test_refreshes_are_counted_by_the_server_that_serves_them():
    # one product per step, so that the round refreshes (a composed round needs none)
    per_step = {**SMALL_KEY["extra"], "hem_steps_per_product": 1}
    sim = build(_config(mode="he", key_holder="server", clip_norm=None, local_epochs=3, extra=per_step))
    sim.server.setup()
    before = sim.server.exchange.refreshes
    result = sim.server.run_round(1)
    served = sim.server.exchange.refreshes - before
    assert result["refreshes"] == served == sum(sim.server.follow_ups_served[REFRESH_REQ].values()) > len(sim.clients)
    assert set(sim.server.follow_ups_served[REFRESH_REQ]) == {"site0", "site1", "site2"}
    plain = build(_config(mode="plain"))
    plain.server.setup()
    assert "refreshes" not in plain.server.run_round(1)  # nothing to refresh: the column stays empty


def test_a_site_that_shares_its_timings_sends_them_in_fixed_width():
    sim = build(_config(mode="plain"))
    sim.server.setup()
    sim.clients[1].share_timings = True
    replies = {}

    class _Keep:
        def __init__(self, client):
            self.client = client

        def handle(self, request):
            reply = self.client.handle(request)
            if decode_request(reply).kind == "fit_res":
                replies[self.client.cid] = decode_request(reply).meta
            return reply

    sim.transport.clients = {c.cid: _Keep(c) for c in sim.clients}
    taken = _spy_timings(sim)
    result = sim.run_round(1)
    assert "seconds" not in replies["site0"] and "seconds" not in replies["site2"]
    shared = replies["site1"]["seconds"]
    assert set(shared) == {"decrypt", "train", "encrypt"} and {len(v) for v in shared.values()} == {12}
    # counted once: from site1's reply, and from site0's and site2's own figures
    own = [t["train"] for t in taken]
    assert result["seconds"]["train"] == pytest.approx(sum(own), abs=1e-6 * len(own))


def test_the_run_folder_keeps_the_sites_timings(tmp_path):
    run(_config(mode="he", rounds=2), tmp_path / "run", progress=False, echo=None)
    with (tmp_path / "run" / "timings.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert all(float(r["seconds_train"]) > 0 and float(r["seconds_encrypt"]) > 0 for r in rows)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        assert all(r["refreshes"] == "" for r in csv.DictReader(f))  # with the sites' key, none
