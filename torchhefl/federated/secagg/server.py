"""The server's side of secure aggregation: relay keys and sealed shares, collect the survivors'
signatures, and reconstruct exactly the masks that hide the sum over the survivors.

The server checks each reply as the sites will (the roster's signatures, the shapes of what it
relays), so that one bad site is left out on its own instead of making every honest site refuse.
It can reconstruct a survivor's self-mask seed or a dropped site's mask key only from ``threshold``
shares, and the sites reveal, for one signed survivor set, one or the other per site. Each
rebuilt secret is checked against its commitment (the seed's hash, the signed public key); a
revealer whose shares fit no accepted rebuilding is outvoted and named (``last["bad_shares"]``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.messages import encode_request
from torchhefl.federated.secagg.constants import (
    CHECK_INS,
    CHECK_RES,
    KEYS_INS,
    KEYS_RES,
    SEED_BYTES,
    SHARES_INS,
    SHARES_META,
    SHARES_RES,
    UNMASK_INS,
    UNMASK_RES,
)
from torchhefl.federated.secagg.site import (
    advertisement_bytes,
    mask_seed,
    seed_commitment,
    survivors_bytes,
    update_label,
)
from torchhefl.federated.transport import CLIENT_FAULTS
from torchhefl.secure.identity import Roster
from torchhefl.secure.masking import prg_ints
from torchhefl.secure.shamir import combine_checked
from torchhefl.secure.share_box import KEY_BYTES, X25519Pair

__all__ = ["SecAggServer"]

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]*")
_MAX_SEALED_HEX = 2 * (SEED_BYTES + KEY_BYTES + 64)


def _hex_bytes(value, size: int | None = None, *, limit: int | None = None) -> bytes:
    if not isinstance(value, str) or len(value) % 2 or not _HEX.fullmatch(value) or (limit is not None and len(value) > limit):
        raise MalformedMessageError("a field that must be hexadecimal bytes is not")
    raw = bytes.fromhex(value)
    if size is not None and len(raw) != size:
        raise MalformedMessageError(f"a field of {len(raw)} bytes where {size} are expected")
    return raw


class SecAggServer:
    """One server's secure-aggregation rounds.

    Args:
        roster: the federation's sites and their public signing keys.
        context: what binds the sites' signatures to this run (the run's Paillier key fingerprint).
        threshold: the fewest sites a sum may cover (default: the roster's strict majority).

    Attributes:
        last: the figures of the last round: the sets ``keyed`` (U1), ``shared`` (U2), ``uploaded``
            (U3), ``signed`` (U4), ``revealed`` (U5), and ``dropped`` (shared but did not upload).
    """

    def __init__(self, roster: Roster, *, context: str, threshold: int | None = None) -> None:
        self.roster, self.context = roster, context
        self.threshold = roster.threshold if threshold is None else int(threshold)
        if not 2 <= self.threshold <= len(roster):
            raise ValueError(f"a threshold of {self.threshold} for a roster of {len(roster)} (it must be 2..{len(roster)})")
        self._round = 0
        self._adverts: dict[str, dict] = {}
        self._sealed: dict[str, dict[str, str]] = {}
        self.shared: list[str] = []
        self.last: dict[str, list[str]] = {}

    def _enough(self, ids, what: str, server_round: int) -> None:
        if len(ids) < self.threshold:
            raise ProtocolError(
                f"round {server_round}: only {len(ids)} site(s) {what}; secure aggregation needs at least "
                f"{self.threshold} (a strict majority of the roster's {len(self.roster)}, never fewer than 2)"
            )

    def _ask(self, server, ids: list[str], kind: str, meta: dict, reply_kind: str, server_round: int, read) -> dict:
        """Send one request to ``ids``; ``read(cid, meta)`` checks each reply (client faults leave its sender out)."""
        out = {}
        for cid, msg in server.broadcast(ids, encode_request(kind, meta), reply_kind, server_round=server_round).items():
            try:
                out[cid] = read(cid, msg.meta)
            except CLIENT_FAULTS as e:
                log.warning("client %s left out of round %d (%s): %s", cid, server_round, reply_kind.removesuffix("_res"), e)
        return out

    # -- before the fit requests ------------------------------------------------------------------------
    def open_round(self, server, server_round: int, selected: list[str]) -> list[str]:
        """Keys, then sealed shares, from the selected sites; the sites that shared (U2), who are
        the round's participants. Raises :class:`ProtocolError` if fewer than ``threshold`` remain."""
        self._round, self._adverts, self._sealed, self.last = server_round, {}, {}, {}
        selected = [cid for cid in selected if cid in self.roster]

        def read_advert(cid, meta):
            a = {k: meta.get(k) for k in ("mask_key", "share_key", "seed_commit", "signature")}
            mk, sk = _hex_bytes(a["mask_key"], KEY_BYTES), _hex_bytes(a["share_key"], KEY_BYTES)
            commit, sig = _hex_bytes(a["seed_commit"], 32), _hex_bytes(a["signature"], 64)
            self.roster.verify(cid, advertisement_bytes(self.context, server_round, cid, mk, sk, commit), sig)
            return a

        adverts = self._ask(server, selected, KEYS_INS, {"round": server_round}, KEYS_RES, server_round, read_advert)
        keyed = sorted(adverts)
        self._enough(keyed, "advertised keys", server_round)

        def read_shares(cid, meta):
            sealed = meta.get("shares")
            if not isinstance(sealed, dict) or set(sealed) != set(keyed) - {cid}:
                raise MalformedMessageError("its shares are not one sealed share for each other keyed site")
            for blob in sealed.values():
                _hex_bytes(blob, limit=_MAX_SEALED_HEX)
            return sealed

        sealed = self._ask(server, keyed, SHARES_INS, {"round": server_round, "keys": adverts}, SHARES_RES, server_round, read_shares)
        shared = sorted(sealed)
        self._enough(shared, "shared their secrets", server_round)
        self._adverts, self._sealed, self.shared = adverts, sealed, shared
        self.last = {"keyed": keyed, "shared": shared}
        return shared

    def fit_meta(self, cid: str) -> dict:
        """The fit request's extra fields for ``cid``: the shares sealed for it by the other participants."""
        return {SHARES_META: {u: self._sealed[u][cid] for u in self.shared if u != cid}}

    # -- after the uploads ------------------------------------------------------------------------------
    def close_round(self, server, server_round: int, uploaded: list[str], count: int, modulus: int) -> list[int]:
        """The signed survivor set, the revealed shares, and from them the ``count`` integers modulo
        ``modulus`` to subtract from the sum of the uploads of ``uploaded`` (U3)."""
        if server_round != self._round:
            raise ProtocolError(f"round {server_round} was not opened (the open round is {self._round})")
        survivors = sorted(uploaded)
        if not set(survivors) <= set(self.shared):
            raise ProtocolError("uploads from sites that did not share their secrets this round")
        self._enough(survivors, "uploaded", server_round)
        message = survivors_bytes(self.context, server_round, survivors)

        def read_signature(cid, meta):
            sig = _hex_bytes(meta.get("signature"), 64)
            self.roster.verify(cid, message, sig)
            return sig.hex()

        meta = {"round": server_round, "survivors": survivors}
        signatures = self._ask(server, survivors, CHECK_INS, meta, CHECK_RES, server_round, read_signature)
        signed = sorted(signatures)
        self._enough(signed, "signed the survivor set", server_round)
        dropped = [u for u in self.shared if u not in survivors]

        def read_reveal(cid, meta):
            seeds, keys = meta.get("seed_shares"), meta.get("key_shares")
            if not isinstance(seeds, dict) or not isinstance(keys, dict) or set(seeds) != set(survivors) or set(keys) != set(dropped):
                raise MalformedMessageError("its shares are not one per survivor's seed and one per dropped site's key")
            return (
                {v: _hex_bytes(s, SEED_BYTES) for v, s in seeds.items()},
                {u: _hex_bytes(s, KEY_BYTES) for u, s in keys.items()},
            )

        reveal_meta = {"round": server_round, "survivors": survivors, "signatures": signatures}
        revealed = self._ask(server, signed, UNMASK_INS, reveal_meta, UNMASK_RES, server_round, read_reveal)
        self._enough(sorted(revealed), "revealed their shares", server_round)
        self.last.update(uploaded=survivors, signed=signed, revealed=sorted(revealed), dropped=dropped)
        return self._correction(server_round, survivors, dropped, revealed, count, modulus)

    def _correction(self, server_round, survivors, dropped, revealed: Mapping, count: int, modulus: int) -> list[int]:
        label = update_label(server_round, self.shared)
        index = self.roster.index
        by_index = {index(w): w for w in revealed}
        bad: set[str] = set()

        def rebuild(shares: Mapping[int, bytes], length: int, check, what: str) -> bytes:
            # a site that reveals a bad share is named and outvoted; the round needs threshold good ones
            secret, wrong = combine_checked(shares, length, self.threshold, check)
            if secret is None:
                raise ProtocolError(f"round {server_round}: the revealed shares do not rebuild {what} (sites sent bad shares)")
            bad.update(by_index[i] for i in wrong)
            return secret

        out = [0] * count
        for v in survivors:
            commit = bytes.fromhex(self._adverts[v]["seed_commit"])
            seed = rebuild({index(w): seeds[v] for w, (seeds, _) in revealed.items()}, SEED_BYTES,
                           lambda s: seed_commitment(s) == commit, f"site {v}'s committed seed")
            out = [(a + b) % modulus for a, b in zip(out, prg_ints(seed, label, count, modulus))]
        for u in dropped:
            public = bytes.fromhex(self._adverts[u]["mask_key"])
            key = rebuild({index(w): keys[u] for w, (_, keys) in revealed.items()}, KEY_BYTES,
                          lambda k: X25519Pair(k).public_bytes() == public, f"site {u}'s signed mask key")
            for v in survivors:
                seed = mask_seed(self.context, server_round, key, u, v, bytes.fromhex(self._adverts[v]["mask_key"]))
                sign = 1 if v < u else -1  # the sign survivor v gave its mask towards u
                out = [(a + sign * b) % modulus for a, b in zip(out, prg_ints(seed, label, count, modulus))]
        if bad:
            log.warning("round %d: %s revealed shares that do not rebuild the committed secrets; outvoted",
                        server_round, ", ".join(sorted(bad)))
        self.last["bad_shares"] = sorted(bad)
        return out
