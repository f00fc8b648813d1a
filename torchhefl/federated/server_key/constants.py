"""The server-key scheme's public parameters and names, in one place.

The fixed-point parameters are public: every scale and bound a site shows is a function of them
and of its step count, never of its data. The message kinds are the requests and replies this
scheme adds to the protocol; the payload kinds are the wire kinds of what those messages carry.
"""

from __future__ import annotations

__all__ = [
    "BASE_SCALE",
    "CLIP_NORM_MESSAGE",
    "CONTINUATION_KIND",
    "COUNT_BITS",
    "KEYS_INS",
    "KEYS_RES",
    "PAYLOAD_FORMAT",
    "PEERS_INS",
    "PEERS_RES",
    "REFRESH_INS",
    "REFRESH_REQ",
    "STATS_KIND",
    "STAT_SCALE",
    "STEP_BITS",
    "UPDATE_KIND",
    "VALUE_BITS",
]

# -- fixed point ---------------------------------------------------------------------------------
BASE_SCALE = 32
"""Fixed-point bits after the binary point of the encrypted global weights (and after a refresh)."""

STEP_BITS = 32
"""Bits after the binary point of the plaintext matrix of one product (a round's composed steps);
each product adds this to the scale, and every upload is at ``BASE_SCALE + STEP_BITS``."""

VALUE_BITS = 16
"""Public bound on a weight's magnitude, ``|theta_j| < 2^VALUE_BITS``: all bounds on the wire derive from it."""

STAT_SCALE = 40
"""Fixed-point bits after the binary point of the masked standardisation statistics."""

COUNT_BITS = 32
"""Public bound on the total sample count, ``sum(n_i) < 2^COUNT_BITS`` (the bound of the count sum)."""

# -- messages (request and reply kinds) ----------------------------------------------------------
KEYS_INS = "hem_keys_ins"
"""Server -> site: the server's Paillier public key (set-up)."""

KEYS_RES = "hem_keys_res"
"""Site -> server: the site's X25519 public key for the pairwise masks."""

PEERS_INS = "hem_peers_ins"
"""Server -> site: every site's X25519 public key, relayed."""

PEERS_RES = "hem_peers_res"
"""Site -> server: the relayed keys were taken."""

REFRESH_REQ = "refresh_req"
"""Site -> server, in answer to a fit (or a refresh): a blinded refresh request as payload."""

REFRESH_INS = "refresh_ins"
"""Server -> site: the refreshed ciphertexts, with the round, attempt and request number."""

# -- payloads ------------------------------------------------------------------------------------
PAYLOAD_FORMAT = 1
"""Version of the masked update and masked statistics payloads."""

UPDATE_KIND = "torchhefl.hem.masked_update"
"""Wire kind of a site's masked update ``Enc(n_i * theta_i + mask_i)``, ``Enc(n_i + mask'_i)``."""

STATS_KIND = "torchhefl.hem.masked_stats"
"""Wire kind of a site's masked standardisation statistics."""

CONTINUATION_KIND = "torchhefl.hem.continuation"
"""Wire kind of a site's saved place in a fit (its own state only: it holds secret masks)."""

CLIP_NORM_MESSAGE = (
    "--clip-norm cannot be used with --key-holder server: clients train on encrypted weights and never "
    "see a plaintext gradient to clip (leave --clip-norm out, or pass --clip-norm none)"
)
"""Why a server-key run refuses gradient clipping (the CLI, the config check and the site all say it)."""
