"""Secure aggregation's cost per round against the pairwise masks it replaced.

``python -m benchmarks.he --only secure_aggregation`` runs it with the bench key (2048 bits by
default). For 3, 10 and 50 simulated sites it runs one round of the protocol between
:class:`~torchhefl.federated.secagg.SecAggSite` objects and a
:class:`~torchhefl.federated.secagg.SecAggServer` over an in-memory relay that encodes every
request and reply as wire bytes (the byte counts are those a deployment sends), masking a
LogisticRegression update on WDBC (31 values modulo the key's ``n``), once with every site and
once with a tenth of them (at least one) dropping after sharing. The baseline, in the same run, is
what a round cost before: each site's pairwise mask from the set-up keys, and no message beyond
its upload. Figures are per site (the mean over sites) and for the server.
"""

from __future__ import annotations

import time

from torchhefl.federated.messages import decode_request, encode_request
from torchhefl.federated.secagg import SecAggServer, SecAggSite
from torchhefl.secure.identity import Roster, SiteIdentity
from torchhefl.secure.masking import PairwiseMasker, mask_label

__all__ = ["bench_secure_aggregation"]

_HANDLERS = {
    "secagg_keys_ins": ("secagg_keys_res", lambda s, m: s.advertise(m["round"])),
    "secagg_shares_ins": ("secagg_shares_res", lambda s, m: {"shares": s.share(m["round"], m["keys"])}),
    "secagg_check_ins": ("secagg_check_res", lambda s, m: {"signature": s.sign_survivors(m["round"], m["survivors"])}),
    "secagg_unmask_ins": ("secagg_unmask_res", lambda s, m: s.reveal(m["round"], m["survivors"], m["signatures"])),
}


class _Relay:
    """What SecAggServer needs of a server (``broadcast``), with each site's time and bytes counted."""

    def __init__(self, sites: dict[str, SecAggSite]) -> None:
        self.sites, self.gone = sites, set()
        self.seconds = dict.fromkeys(sites, 0.0)
        self.bytes_down = dict.fromkeys(sites, 0)
        self.bytes_up = dict.fromkeys(sites, 0)

    def broadcast(self, ids, request, reply_kind, *, server_round=None):
        msg = decode_request(request)
        kind, handle = _HANDLERS[msg.kind]
        out = {}
        for cid in ids:
            if cid in self.gone:
                continue
            t0 = time.perf_counter()
            reply = encode_request(kind, {"cid": cid, "round": msg.meta["round"], **handle(self.sites[cid], msg.meta)})
            self.seconds[cid] += time.perf_counter() - t0
            self.bytes_down[cid] += len(request)
            self.bytes_up[cid] += len(reply)
            out[cid] = decode_request(reply)
        return out


def _one_round(n_sites: int, modulus: int, count: int, dropped: int) -> dict:
    identities = [SiteIdentity(f"site{i}") for i in range(n_sites)]
    roster = Roster.of(identities)
    context = "00" * 32
    sites = {i.cid: SecAggSite(i, roster, context=context) for i in identities}
    server = SecAggServer(roster, context=context)
    relay = _Relay(sites)
    t_server = time.perf_counter()
    participants = server.open_round(relay, 1, list(sites))
    t_server = time.perf_counter() - t_server - sum(relay.seconds.values())
    gone = participants[:dropped]
    uploaded = []
    for cid in participants:
        if cid in gone:
            continue
        extra = server.fit_meta(cid)
        relay.bytes_down[cid] += len(encode_request("fit_ins", extra))  # the sealed shares the fit request carries
        t0 = time.perf_counter()
        sites[cid].take_shares(1, participants, extra["secagg_shares"])
        sites[cid].mask(1, count, modulus)
        relay.seconds[cid] += time.perf_counter() - t0
        uploaded.append(cid)
    relay.gone = set(gone)
    before = sum(relay.seconds.values())
    t0 = time.perf_counter()
    server.close_round(relay, 1, uploaded, count, modulus)
    t_server += time.perf_counter() - t0 - (sum(relay.seconds.values()) - before)
    live = [c for c in sites if c not in gone]
    return {
        "site_seconds": sum(relay.seconds[c] for c in live) / len(live),
        "site_bytes": sum(relay.bytes_up[c] + relay.bytes_down[c] for c in live) / len(live),
        "server_seconds": t_server,
    }


def _pairwise_baseline(n_sites: int, modulus: int, count: int) -> float:
    """Seconds per site of the masks a round cost before: pairwise masks from the set-up keys."""
    maskers = [PairwiseMasker(f"site{i}") for i in range(n_sites)]
    keys = {m.cid: m.public_bytes() for m in maskers}
    for m in maskers:
        m.agree(keys)
    names = sorted(keys)
    label = mask_label("update", names, round=1, attempt=1)
    t0 = time.perf_counter()
    for m in maskers:
        m.mask(label, names, count, modulus)
    return (time.perf_counter() - t0) / n_sites


def bench_secure_aggregation(ctx, *, sizes: tuple[int, ...] = (3, 10, 50), count: int = 31) -> dict:
    """One round of secure aggregation for each roster size: per-site seconds and bytes, server seconds."""
    modulus = int(ctx.public_key.n)
    rows = []
    for n in sizes:
        baseline = _pairwise_baseline(n, modulus, count)
        full = _one_round(n, modulus, count, dropped=0)
        drop = _one_round(n, modulus, count, dropped=max(1, n // 10))
        rows.append({
            "sites": n,
            "threshold": Roster.of([SiteIdentity(f"s{i}") for i in range(n)]).threshold,
            "pairwise_mask_seconds_per_site": round(baseline, 5),
            "secagg_seconds_per_site": round(full["site_seconds"], 5),
            "secagg_over_pairwise": round(full["site_seconds"] / baseline, 1),
            "secagg_bytes_per_site": round(full["site_bytes"]),
            "server_seconds": round(full["server_seconds"], 4),
            "dropped": max(1, n // 10),
            "with_drops_seconds_per_site": round(drop["site_seconds"], 5),
            "with_drops_bytes_per_site": round(drop["site_bytes"]),
            "with_drops_server_seconds": round(drop["server_seconds"], 4),
        })
    return {
        "bench": "secure_aggregation",
        "key_bits": ctx.public_key.bits,
        "values_masked": count,
        "baseline": "pairwise masks from the set-up keys, no extra messages",
        "rounds": rows,
    }
