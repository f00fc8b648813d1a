"""A site's side of secure aggregation: fresh keys per round, Shamir shares, masks, signed survivor sets.

The site trusts nothing the server relays unless the roster's key for the sender signed it, and it
keeps the rules that make a deviating server learn no more than the sum over at least ``threshold``
sites:

- every participant set it accepts is a subset of the roster with at least ``threshold`` members;
- it uploads at most once per round, and never for a round at or before one it uploaded in;
- it signs one survivor set per round, and reveals shares only for a set that ``threshold`` sites
  signed: of the self-mask seed of each survivor, of the mask key of each site that dropped, never
  both for one site.

Its state between messages is a :class:`SiteRound` (secret: for the site's own storage only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.secagg.constants import (
    KEYS_SIGNED,
    SEED_BYTES,
    SHARE_SEALED,
    SURVIVORS_SIGNED,
)
from torchhefl.secure import strict_json
from torchhefl.secure.identity import Roster, SiteIdentity, signed_bytes
from torchhefl.secure.masking import mask_label, prg_ints
from torchhefl.secure.shamir import split_secret
from torchhefl.secure.share_box import KEY_BYTES, X25519Pair, agree, open_sealed, seal

__all__ = [
    "SecAggSite",
    "SiteRound",
    "advertisement_bytes",
    "check_participants",
    "mask_seed",
    "seed_commitment",
    "share_context",
    "survivors_bytes",
    "update_label",
]

_HEX = re.compile(r"[0-9a-f]*")
_SHARE_BYTES = SEED_BYTES + KEY_BYTES  # a share of the self-mask seed, then of the mask key
_MAX_SEALED_HEX = 2 * (_SHARE_BYTES + 64)


def seed_commitment(seed: bytes) -> bytes:
    """The public commitment to a self-mask seed (the server checks its reconstruction against it)."""
    return hashlib.sha256(b"torchhefl/secagg/self-seed/v1" + seed).digest()


def advertisement_bytes(context: str, server_round: int, cid: str, mask_key: bytes, share_key: bytes, commit: bytes) -> bytes:
    """What a site signs when it advertises its keys for a round."""
    return signed_bytes(
        KEYS_SIGNED, run=context, round=server_round, cid=cid,
        mask_key=mask_key.hex(), share_key=share_key.hex(), seed_commit=commit.hex(),
    )


def survivors_bytes(context: str, server_round: int, survivors: Sequence[str]) -> bytes:
    """What a site signs when it agrees to a round's survivor set."""
    return signed_bytes(SURVIVORS_SIGNED, run=context, round=server_round, survivors=sorted(survivors))


def share_context(context: str, server_round: int, sender: str, receiver: str) -> bytes:
    """The associated data of a sealed share (binds it to the run, round, sender and receiver)."""
    return signed_bytes(SHARE_SEALED, run=context, round=server_round, sender=sender, receiver=receiver)


def update_label(server_round: int, participants: Sequence[str]) -> bytes:
    """The label of a round's masked upload (same bytes at every site and at the server)."""
    return mask_label("update", participants, round=server_round)


def mask_seed(context: str, server_round: int, private_bytes: bytes, me: str, peer: str, peer_key: bytes) -> bytes:
    """The pairwise mask seed of ``me`` and ``peer`` for one round (either side, or the server from a
    reconstructed mask key, derives the same bytes)."""
    info = b"torchhefl/secagg/mask/v1" + json.dumps([context, server_round, sorted([me, peer])]).encode()
    return agree(private_bytes, peer_key, info)


def check_participants(cid: str, roster: Roster, threshold: int, participants, *, within: Sequence[str], what: str) -> list[str]:
    """``participants`` as a sorted list, if it is a list of distinct names within ``within`` (itself
    within the roster), holds ``cid``, and has at least ``threshold`` members; else :class:`ProtocolError`."""
    if not isinstance(participants, list) or not all(isinstance(p, str) for p in participants):
        raise MalformedMessageError(f"{what} is not a list of site names")
    if len(set(participants)) != len(participants):
        raise ProtocolError(f"{what} names a site twice")
    ghosts = sorted(p for p in participants if p not in roster)
    if ghosts:
        raise ProtocolError(f"site {cid} refuses {what} with sites not on the roster: {', '.join(ghosts)}")
    outside = sorted(set(participants) - set(within))
    if outside:
        raise ProtocolError(f"site {cid} refuses {what} with sites outside the round: {', '.join(outside)}")
    if cid not in participants:
        raise ProtocolError(f"{what} does not name site {cid}")
    if len(participants) < threshold:
        raise ProtocolError(
            f"site {cid} refuses {what} of {len(participants)} site(s): at least {threshold} of the roster's "
            f"{len(roster)} must take part, or the masks hide nothing"
        )
    return sorted(participants)


@dataclass
class SiteRound:
    """One site's secrets and progress in one round (secret: the site's own storage only)."""

    round: int
    mask_key: bytes  #: X25519 private key of the pairwise masks
    share_key: bytes  #: X25519 private key of the sealed shares
    seed: bytes  #: self-mask seed
    keys: dict[str, tuple[bytes, bytes]] | None = None  #: the round's verified sites -> (mask key, share key)
    participants: list[str] | None = None  #: the sites whose shares this site holds, its upload's mask set
    held: dict[str, bytes] = field(default_factory=dict)  #: sender -> its share held here
    uploaded: bool = False
    survivors: list[str] | None = None  #: the survivor set this site signed
    revealed: bool = False

    def to_dict(self) -> dict:
        return {
            "round": self.round, "mask_key": self.mask_key.hex(), "share_key": self.share_key.hex(), "seed": self.seed.hex(),
            "keys": None if self.keys is None else {c: [a.hex(), b.hex()] for c, (a, b) in self.keys.items()},
            "participants": self.participants, "held": {c: s.hex() for c, s in self.held.items()},
            "uploaded": self.uploaded, "survivors": self.survivors, "revealed": self.revealed,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> SiteRound:
        try:
            keys = d["keys"]
            return cls(
                round=int(d["round"]), mask_key=bytes.fromhex(d["mask_key"]), share_key=bytes.fromhex(d["share_key"]),
                seed=bytes.fromhex(d["seed"]),
                keys=None if keys is None else {c: (bytes.fromhex(a), bytes.fromhex(b)) for c, (a, b) in keys.items()},
                participants=None if d["participants"] is None else [str(p) for p in d["participants"]],
                held={c: bytes.fromhex(s) for c, s in d["held"].items()},
                uploaded=bool(d["uploaded"]),
                survivors=None if d["survivors"] is None else [str(p) for p in d["survivors"]],
                revealed=bool(d["revealed"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MalformedMessageError(f"saved secure-aggregation state is damaged: {e}") from None


class SecAggSite:
    """One site's secure-aggregation state across rounds.

    Args:
        identity: the site's signing key.
        roster: the federation's sites and their public signing keys.
        threshold: the fewest sites a sum may cover (default: the roster's strict majority).
        context: what binds signatures to this run (the fingerprint of the run's Paillier key).
    """

    def __init__(self, identity: SiteIdentity, roster: Roster, *, context: str, threshold: int | None = None) -> None:
        if identity.cid not in roster:
            raise ProtocolError(f"site {identity.cid} is not on the roster")
        self.identity, self.roster, self.context = identity, roster, context
        self.cid = identity.cid
        self.threshold = roster.threshold if threshold is None else int(threshold)
        if not 2 <= self.threshold <= len(roster):
            raise ValueError(f"a threshold of {self.threshold} for a roster of {len(roster)} (it must be 2..{len(roster)})")
        #: the last round this site uploaded in (it never uploads again for it or an earlier one)
        self.last_uploaded = 0
        self.current: SiteRound | None = None

    # -- state kept between messages ----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"last_uploaded": self.last_uploaded, "current": None if self.current is None else self.current.to_dict()}
        return json.dumps(doc, sort_keys=True).encode()

    def restore(self, blob: bytes) -> None:
        doc = strict_json.loads(blob, what="saved secure-aggregation state")
        if not isinstance(doc, dict) or type(doc.get("last_uploaded")) is not int:
            raise MalformedMessageError("saved secure-aggregation state is damaged")
        self.last_uploaded = doc["last_uploaded"]
        self.current = None if doc.get("current") is None else SiteRound.from_dict(doc["current"])

    # -- 1. keys ----------------------------------------------------------------------------------------
    def advertise(self, server_round) -> dict:
        """Fresh keys and seed for ``server_round``; the signed advertisement (hex fields)."""
        if type(server_round) is not int or server_round < 1:
            raise MalformedMessageError(f"round {server_round!r} is not a positive integer")
        if server_round <= self.last_uploaded:
            raise ProtocolError(
                f"site {self.cid} already uploaded in round {self.last_uploaded}: it keys no round at or before it again"
            )
        mask, share, seed = X25519Pair(), X25519Pair(), os.urandom(SEED_BYTES)
        self.current = SiteRound(server_round, mask.private_bytes(), share.private_bytes(), seed)
        commit = seed_commitment(seed)
        signature = self.identity.sign(
            advertisement_bytes(self.context, server_round, self.cid, mask.public_bytes(), share.public_bytes(), commit)
        )
        return {
            "mask_key": mask.public_bytes().hex(), "share_key": share.public_bytes().hex(),
            "seed_commit": commit.hex(), "signature": signature.hex(),
        }

    def _round(self, server_round, step: str) -> SiteRound:
        c = self.current
        if c is None or type(server_round) is not int or server_round != c.round:
            expected = "none" if c is None else c.round
            raise ProtocolError(f"site {self.cid} got {step} for round {server_round!r}; its keys are for round {expected}")
        return c

    # -- 2. shares --------------------------------------------------------------------------------------
    def share(self, server_round, adverts) -> dict[str, str]:
        """Check the relayed advertisements (roster, signatures, at least ``threshold`` sites, this
        site's own unchanged); the sealed shares for each other site, hex, by receiver."""
        c = self._round(server_round, "the round's keys")
        if c.keys is not None:
            raise ProtocolError(f"site {self.cid} already shared its secrets for round {c.round}")
        if not isinstance(adverts, dict):
            raise MalformedMessageError("the relayed keys are not a {site: advertisement} map")
        names = check_participants(self.cid, self.roster, self.threshold, list(adverts), within=self.roster.sites, what="the round's key list")
        keys = {}
        for cid in names:
            a = adverts[cid]
            if not isinstance(a, dict) or not all(isinstance(a.get(k), str) and _HEX.fullmatch(a[k]) for k in ("mask_key", "share_key", "seed_commit", "signature")):
                raise MalformedMessageError(f"the advertisement relayed for site {cid!r} is malformed")
            mk, sk, commit, sig = (bytes.fromhex(a[k]) for k in ("mask_key", "share_key", "seed_commit", "signature"))
            if len(mk) != KEY_BYTES or len(sk) != KEY_BYTES or len(commit) != 32:
                raise MalformedMessageError(f"the advertisement relayed for site {cid!r} has keys of the wrong size")
            self.roster.verify(cid, advertisement_bytes(self.context, c.round, cid, mk, sk, commit), sig)
            keys[cid] = (mk, sk)
        mine = (X25519Pair(c.mask_key).public_bytes(), X25519Pair(c.share_key).public_bytes())
        if keys[self.cid] != mine:
            raise ProtocolError(f"the relayed key list does not hold site {self.cid}'s own keys")
        if len({k[0] for k in keys.values()}) != len(keys) or len({k[1] for k in keys.values()}) != len(keys):
            raise ProtocolError("the relayed key list gives two sites the same key")
        n = len(self.roster)
        seed_shares = split_secret(c.seed, self.threshold, n)
        key_shares = split_secret(c.mask_key, self.threshold, n)
        out = {}
        for cid in names:
            i = self.roster.index(cid)
            share = seed_shares[i] + key_shares[i]
            if cid == self.cid:
                c.held[cid] = share
                continue
            box = agree(c.share_key, keys[cid][1], _box_info(self.context, c.round, self.cid, cid))
            out[cid] = seal(box, share, share_context(self.context, c.round, self.cid, cid)).hex()
        c.keys = keys
        return out

    # -- 3. the masked upload ---------------------------------------------------------------------------
    def take_shares(self, server_round, participants, sealed) -> list[str]:
        """Accept the round's participant set and the shares sealed for this site by each of them."""
        c = self._round(server_round, "a fit request")
        if c.keys is None:
            raise ProtocolError(f"site {self.cid} was asked to upload in round {c.round} before it shared its secrets")
        if c.uploaded:
            raise ProtocolError(f"site {self.cid} already uploaded in round {c.round}: it never uploads twice for one round")
        names = check_participants(self.cid, self.roster, self.threshold, participants, within=list(c.keys), what="the upload's participant list")
        if not isinstance(sealed, dict) or set(sealed) != set(names) - {self.cid}:
            raise MalformedMessageError("the fit request does not carry one sealed share from each other participant")
        held = {self.cid: c.held[self.cid]}
        for cid in names:
            if cid == self.cid:
                continue
            blob = sealed[cid]
            if not isinstance(blob, str) or len(blob) > _MAX_SEALED_HEX or not _HEX.fullmatch(blob) or len(blob) % 2:
                raise MalformedMessageError(f"the share relayed from site {cid!r} is not hexadecimal of a sealed share")
            box = agree(c.share_key, c.keys[cid][1], _box_info(self.context, c.round, cid, self.cid))
            share = open_sealed(box, bytes.fromhex(blob), share_context(self.context, c.round, cid, self.cid))
            if len(share) != _SHARE_BYTES:
                raise ProtocolError(f"the share from site {cid!r} is not {_SHARE_BYTES} bytes")
            held[cid] = share
        c.participants, c.held = names, held
        return names

    def mask(self, server_round, count: int, modulus: int) -> list[int]:
        """This site's mask for its one upload of the round: the self-mask plus the pairwise masks
        towards the participants (``count`` integers modulo ``modulus``). Marks the round uploaded."""
        c = self._round(server_round, "an upload")
        if c.participants is None:
            raise ProtocolError(f"site {self.cid} has no participant set for round {c.round}")
        if c.uploaded:
            raise ProtocolError(f"site {self.cid} already uploaded in round {c.round}: it never uploads twice for one round")
        c.uploaded = True
        self.last_uploaded = c.round
        label = update_label(c.round, c.participants)
        out = prg_ints(c.seed, label, count, modulus)
        for peer in c.participants:
            if peer == self.cid:
                continue
            stream = prg_ints(mask_seed(self.context, c.round, c.mask_key, self.cid, peer, c.keys[peer][0]), label, count, modulus)
            sign = 1 if self.cid < peer else -1
            out = [(a + sign * b) % modulus for a, b in zip(out, stream)]
        return out

    # -- 4. the survivor set ----------------------------------------------------------------------------
    def sign_survivors(self, server_round, survivors) -> str:
        """The signature (hex) of the round's survivor set; one set per round."""
        c = self._round(server_round, "a survivor set")
        if not c.uploaded:
            raise ProtocolError(f"site {self.cid} did not upload in round {c.round}; it signs no survivor set for it")
        names = check_participants(self.cid, self.roster, self.threshold, survivors, within=c.participants, what="the survivor set")
        if c.survivors is not None and c.survivors != names:
            raise ProtocolError(f"site {self.cid} already signed another survivor set for round {c.round}")
        c.survivors = names
        return self.identity.sign(survivors_bytes(self.context, c.round, names)).hex()

    # -- 5. unmasking -----------------------------------------------------------------------------------
    def reveal(self, server_round, survivors, signatures) -> dict[str, dict[str, str]]:
        """The shares that unmask the sum over ``survivors``, once ``threshold`` survivors signed that
        set: of each survivor's self-mask seed, of each dropped participant's mask key (hex, by site)."""
        c = self._round(server_round, "an unmask request")
        if c.survivors is None:
            raise ProtocolError(f"site {self.cid} signed no survivor set for round {c.round}")
        names = check_participants(self.cid, self.roster, self.threshold, survivors, within=c.participants, what="the survivor set")
        if names != c.survivors:
            raise ProtocolError(f"site {self.cid} signed another survivor set for round {c.round}: the server showed sites different sets")
        if not isinstance(signatures, dict) or not all(isinstance(s, str) and _HEX.fullmatch(s) for s in signatures.values()):
            raise MalformedMessageError("the survivors' signatures are not a {site: hex signature} map")
        signers = [s for s in signatures if s in names]
        if len(signers) != len(signatures):
            raise ProtocolError("the survivor set's signatures include sites outside it")
        message = survivors_bytes(self.context, c.round, names)
        for cid in signers:
            self.roster.verify(cid, message, bytes.fromhex(signatures[cid]))
        if len(signers) < self.threshold:
            raise ProtocolError(
                f"site {self.cid} sees {len(signers)} signature(s) of the survivor set; {self.threshold} are needed before it reveals shares"
            )
        c.revealed = True
        dropped = [p for p in c.participants if p not in names]
        return {
            "seed_shares": {v: c.held[v][:SEED_BYTES].hex() for v in names if v in c.held},
            "key_shares": {u: c.held[u][SEED_BYTES:].hex() for u in dropped if u in c.held},
        }


def _box_info(context: str, server_round: int, sender: str, receiver: str) -> bytes:
    return b"torchhefl/secagg/box/v1" + json.dumps([context, server_round, sorted([sender, receiver])]).encode()

