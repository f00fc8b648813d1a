"""Secure aggregation's dropout recovery: sites that vanish after sharing their secrets, or after
uploading, leave a round that completes in one attempt with the sum over the uploads that arrived,
equal to plaintext FedAvg over the same sites within the fixed-point error."""

import pytest
import torch

from torchhefl.exceptions import ProtocolError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.messages import decode_request
from torchhefl.federated.transport import ClientUnavailableError

#: HEM's 20-bit step matrices keep the encrypted run within this of plaintext SGD (see test_server_key)
ATOL = 5e-5


def _config(mode: str, clients: int, **overrides) -> TrainConfig:
    base = dict(mode=mode, clients=clients, rounds=2, key_bits=512, extra={"allow_insecure_keys": True})
    if mode == "he":
        base.update(key_holder="server", clip_norm=None)
    else:
        base.update(clip_norm=None)
    base.update(overrides)
    return TrainConfig(**base)


class _VanishesAfter:
    """A site that answers until it has sent a ``kind`` reply in round ``server_round``, then is unreachable."""

    def __init__(self, client, kind: str, server_round: int) -> None:
        self.client, self.kind, self.server_round, self.gone = client, kind, server_round, False

    def handle(self, request: bytes) -> bytes:
        if self.gone:
            raise ClientUnavailableError(f"{self.client.cid} is gone")
        reply = self.client.handle(request)
        msg = decode_request(reply)
        if msg.kind == self.kind and msg.meta.get("round") == self.server_round:
            self.gone = True
        return reply


def _run(cfg, vanish: dict[str, str], server_round: int = 1):
    """Train ``cfg`` with each site of ``vanish`` gone after sending that kind of reply in ``server_round``."""
    sim = build(cfg)
    for cid, kind in vanish.items():
        index = [c.cid for c in sim.clients].index(cid)
        sim.transport.clients[cid] = _VanishesAfter(sim.clients[index], kind, server_round)
    sim.server.setup()
    results = [sim.server.run_round(r) for r in range(1, server_round + 1)]
    return sim, results


def _plain_without(clients: int, absent: list[str], server_round: int = 1):
    sim = build(_config("plain", clients, rounds=server_round))
    sim.server.setup()
    results = []
    for r in range(1, server_round + 1):
        sim.transport.fail = set(absent) if r == server_round else set()
        results.append(sim.server.run_round(r))
    return sim, results


@pytest.mark.parametrize(
    ("clients", "gone"), [(3, ["site1"]), (5, ["site1", "site3"])], ids=["1-of-3", "2-of-5"]
)
def test_sites_that_drop_after_sharing_leave_the_sum_of_the_survivors_in_one_attempt(clients, gone):
    """They shared their secrets but never upload: the survivors reveal their mask keys."""
    sim, results = _run(_config("he", clients), dict.fromkeys(gone, "secagg_shares_res"))
    r = results[0]
    survivors = [c.cid for c in sim.clients if c.cid not in gone]
    assert r["attempts"] == 1 and r["clients"] == survivors and r["dropped"] == gone
    last = sim.server.exchange.secagg.last
    assert last["dropped"] == gone and last["uploaded"] == survivors and last["revealed"] == survivors
    plain, presults = _plain_without(clients, gone)
    a, p = sim.final_state(), plain.final_state()
    for k in a:
        torch.testing.assert_close(a[k], p[k], rtol=0, atol=ATOL)
    assert presults[0]["clients"] == survivors


@pytest.mark.parametrize(
    ("clients", "gone"), [(3, ["site1"]), (5, ["site1", "site3"])], ids=["1-of-3", "2-of-5"]
)
def test_sites_that_drop_after_uploading_stay_in_the_sum_in_one_attempt(clients, gone):
    """Their uploads arrived: the others reveal their self-mask seeds and the sum holds every upload."""
    sim, results = _run(_config("he", clients), dict.fromkeys(gone, "fit_res"))
    r = results[0]
    everyone = [c.cid for c in sim.clients]
    assert r["attempts"] == 1 and r["clients"] == everyone and r["dropped"] == []
    last = sim.server.exchange.secagg.last
    assert last["dropped"] == [] and last["signed"] == [c for c in everyone if c not in gone]
    plain, _ = _plain_without(clients, [])
    a, p = sim.final_state(), plain.final_state()
    for k in a:
        torch.testing.assert_close(a[k], p[k], rtol=0, atol=ATOL)


def test_too_many_drops_stop_the_round_without_a_decryption():
    """Two of three gone after sharing: one upload is below the threshold, nothing is decrypted."""
    sim = build(_config("he", 3))
    for i in (1, 2):
        sim.transport.clients[f"site{i}"] = _VanishesAfter(sim.clients[i], "secagg_shares_res", 1)
    sim.server.setup()
    with pytest.raises(ProtocolError, match=r"round 1: only 1 site\(s\) uploaded; secure aggregation needs at least 2"):
        sim.server.run_round(1)
    assert [p for p, _ in sim.server.exchange.decryptions if p != "refresh"] == ["statistics_sum"]


def test_a_later_round_goes_on_with_every_site_back():
    """A site that dropped in round 1 keys round 2 afresh and is in its sum."""
    sim = build(_config("he", 3, rounds=2))
    sim.server.setup()
    sim.transport.fail = {"site2"}
    first = sim.server.run_round(1)
    sim.transport.fail = set()
    second = sim.server.run_round(2)
    assert first["clients"] == ["site0", "site1"] and second["clients"] == ["site0", "site1", "site2"]
    assert second["attempts"] == 1
