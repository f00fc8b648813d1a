"""Key sizes and their security strength: the default and minimum modulus sizes, the size of the
DJN random exponents, and the warning for a small key used on request (tests only)."""

from __future__ import annotations

import warnings

__all__ = [
    "DEFAULT_KEY_BITS",
    "MIN_COIN_BITS",
    "MIN_KEY_BITS",
    "MIN_SECURE_KEY_BITS",
    "InsecureKeyWarning",
    "check_key_bits",
    "coin_bits",
    "security_bits",
    "work_factor",
]

DEFAULT_KEY_BITS = 2048
MIN_SECURE_KEY_BITS = 2048
MIN_KEY_BITS = 256
"""Smallest modulus accepted at all, even with ``allow_insecure=True``."""

MIN_COIN_BITS = 256
"""Fewest bits of a DJN random exponent, whatever the key size."""


class InsecureKeyWarning(UserWarning):
    """A key shorter than :data:`MIN_SECURE_KEY_BITS` was generated or loaded on request."""


def coin_bits(n_bits: int) -> int:
    """Bits of a DJN random exponent for an ``n_bits`` key: ``max(256, 2 * security level)``.

    The random factor of a ciphertext is ``h_s^a`` for a uniform ``a`` in ``[0, 2^t)``. Damgård,
    Jurik and Nielsen, "A generalization of Paillier's public-key system with applications to
    electronic voting" (Int. J. Inf. Secur. 9, 2010), in their section on making encryption
    faster, take ``a`` of ``ceil(n_bits / 2)`` bits, as libdjn (in ABY), Intel's IPCL and
    SecretFlow's HEU implement it. Shorter exponents rest on the short-exponent discrete-log
    assumption: telling which plaintext a ciphertext holds then costs about ``2^(t/2)`` group
    operations by the best known attack, Pollard's lambda method on ``a`` (van Oorschot and
    Wiener, "On Diffie-Hellman key agreement with short exponents", EUROCRYPT 1996). We follow the
    rule used for short private exponents in discrete-log groups, ``t >= 2s`` bits for security
    strength ``s`` (NIST SP 800-56A Rev. 3 for the safe-prime groups), with ``s`` the key's
    strength from NIST SP 800-57 Part 1 Rev. 5, table 2, and never fewer than 256 bits (128-bit
    security for the randomness whatever the key): 2048-bit keys (112-bit strength) get 256; 3072
    and 4096 (128) 256; 7680 (192) 384; 15360 (256) 512.
    """
    return max(MIN_COIN_BITS, 2 * security_bits(n_bits))


def security_bits(n_bits: int) -> int:
    """Security strength in bits of an ``n_bits`` factoring-based key (NIST SP 800-57 Part 1 Rev. 5, table 2)."""
    if n_bits >= 15360:
        return 256
    if n_bits >= 7680:
        return 192
    if n_bits >= 3072:
        return 128
    if n_bits >= 2048:
        return 112
    return 80


def work_factor(n_bits: int) -> float:
    """Cost of a modular exponentiation for an ``n_bits`` key relative to a 2048-bit one: ``(n_bits / 2048)^2.5``."""
    return (n_bits / 2048.0) ** 2.5


def check_key_bits(bits: int, allow_insecure: bool, stacklevel: int = 3) -> int:
    """``bits`` if it is a usable modulus size: ``TypeError`` for a non-int, ``ValueError`` below
    :data:`MIN_KEY_BITS`, or below :data:`MIN_SECURE_KEY_BITS` unless ``allow_insecure`` (which
    warns with :class:`InsecureKeyWarning`)."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if bits < MIN_KEY_BITS:
        raise ValueError(f"a key of {bits} bits is too small to use at all (minimum {MIN_KEY_BITS})")
    if bits < MIN_SECURE_KEY_BITS:
        if not allow_insecure:
            raise ValueError(
                f"a {bits}-bit key is insecure (minimum {MIN_SECURE_KEY_BITS}); pass allow_insecure=True for tests only"
            )
        warnings.warn(
            f"using an insecure {bits}-bit Paillier key (allow_insecure=True); never use it for real data",
            InsecureKeyWarning,
            stacklevel=stacklevel,
        )
    return bits
