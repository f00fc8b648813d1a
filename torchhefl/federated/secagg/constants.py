"""Secure aggregation's message kinds, signed purposes and sizes, in one place.

One round of the protocol (Bonawitz et al., CCS 2017, with signed keys and a signed survivor set):

1. ``secagg_keys_ins`` -> each selected site advertises two fresh X25519 public keys (masks, shares)
   and a commitment to a fresh self-mask seed, signed with its identity key.
2. ``secagg_shares_ins`` relays the signed advertisements -> each site checks them against the
   roster and answers with Shamir shares of its self-mask seed and its mask key, one sealed box per peer.
3. ``fit_ins`` carries each site's sealed shares from the others -> the site trains and uploads its
   update masked with its self-mask and pairwise masks towards the participants (once per round).
4. ``secagg_check_ins`` names the sites whose uploads arrived -> each signs that survivor set.
5. ``secagg_unmask_ins`` relays the signatures -> a site that sees enough of them for the same set
   reveals shares of the survivors' self-mask seeds and of the dropped sites' mask keys, never both
   for one site; the server removes the masks from the sum.
"""

from __future__ import annotations

__all__ = [
    "CHECK_INS",
    "CHECK_RES",
    "KEYS_INS",
    "KEYS_RES",
    "KEYS_SIGNED",
    "SEED_BYTES",
    "SHARES_INS",
    "SHARES_META",
    "SHARES_RES",
    "SHARE_SEALED",
    "SURVIVORS_SIGNED",
    "UNMASK_INS",
    "UNMASK_RES",
]

KEYS_INS = "secagg_keys_ins"
"""Server -> site: advertise this round's keys."""
KEYS_RES = "secagg_keys_res"
SHARES_INS = "secagg_shares_ins"
"""Server -> site: the signed advertisements of the round's sites; answer with sealed shares."""
SHARES_RES = "secagg_shares_res"
SHARES_META = "secagg_shares"
"""The fit request's field holding the sealed shares addressed to the site, by sender."""
CHECK_INS = "secagg_check_ins"
"""Server -> site: the sites whose masked uploads arrived; answer with a signature of that set."""
CHECK_RES = "secagg_check_res"
UNMASK_INS = "secagg_unmask_ins"
"""Server -> site: the survivor set and the survivors' signatures of it; answer with shares."""
UNMASK_RES = "secagg_unmask_res"

KEYS_SIGNED = "torchhefl/secagg/keys/v1"
SURVIVORS_SIGNED = "torchhefl/secagg/survivors/v1"
SHARE_SEALED = "torchhefl/secagg/share/v1"

SEED_BYTES = 16
"""A self-mask seed: 128 bits from the OS, expanded by SHAKE-256."""
