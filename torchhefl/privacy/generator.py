"""The random source of DP-SGD: Poisson sampling masks and Gaussian noise nobody else can regenerate.

A differential-privacy guarantee holds only against a party that cannot reproduce the noise: a
server that knows the noise subtracts it from an update and is left with the noise-free one. So
the noise and the sampling of a site come from :class:`SecureGenerator`, never from the run's
seed, which is public (run config, ``config.json``; the server sets it under Flower).

Source. A :class:`SecureGenerator` is a ChaCha20 keystream (RFC 8439, through ``cryptography``'s
``Cipher(algorithms.ChaCha20(key, nonce), mode=None)``) under a 256-bit key drawn from the OS
(``secrets.token_bytes(32)``), a fresh key for every generator. The key is handed to the cipher
and not kept: it is in no attribute, ``repr``, message, checkpoint, log or config, and a
generator refuses to be pickled or copied. A keystream rather than one ``os.urandom`` call per
draw because it costs one system call per generator and then runs at the speed of the cipher,
and because the same sampler then serves the one deterministic use (below): the OS's own source
(``getrandom`` on Linux) is itself a ChaCha20 stream keyed from the entropy pool, so nothing is
lost against it. A key is used with one all-zero nonce, which is safe because every generator has
its own key; one generator draws at most 256 GiB (2^32 blocks of ChaCha20's 32-bit counter).

Uniform draws are ``k * 2**-53`` with ``k`` the top 53 bits of a 64-bit keystream word: every
float64 multiple of ``2**-53`` in ``[0, 1)`` with equal probability.

Gaussian noise. Naive floating-point sampling leaks: the set of float64 values a sampler can
output is sparse and depends on the mean, so ``mean + noise`` can betray the mean (Mironov,
"On significance of the least significant bits for differential privacy", CCS 2012, for the
Laplace mechanism; Holohan & Braghin, "Secure random sampling in differential privacy", ESORICS
2021, arXiv:2107.10138, for the Gaussian; Jin et al., "Are we there yet? Timing and
floating-point attacks on differential privacy systems", S&P 2022, arXiv:2112.05307, against
Opacus). :meth:`SecureGenerator.normal` follows Opacus' ``secure_mode``
(``opacus/optimizers/optimizer.py::_generate_noise``), which implements Holohan & Braghin's fix
(their section 5.1 with n = 2): each coordinate is the sum of 4 independent N(0, std^2) draws
divided by 2, itself N(0, std^2), so an attacker must search 2^(53 * 3) combinations of inputs
instead of 2^53. Each of the 4 draws is the cosine branch of Box-Muller on two fresh uniforms
(the sine branch is discarded, so no two draws share inputs): 8 uniforms, 64 keystream bytes,
per coordinate, in float64. Opacus also draws and discards one sample before the four; that step
concerns ``torch.Generator``'s cached second Box-Muller value and has no counterpart here (nothing
is cached; every draw reads fresh keystream), so it is left out.

Deterministic noise, for tests only. :meth:`SecureGenerator.insecure_from_seed` keys the same
cipher with SHA-256 of public integers (the run's seed, a site, a round) and warns with
:class:`InsecureNoiseWarning`: whoever knows those integers regenerates the noise, so the
differential-privacy guarantee is void against them. Only code that asks for it by that name
(``DPConfig(insecure_seeded_noise=True)``) gets it; no command-line flag or Flower run config
reaches it.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from torch import Tensor

__all__ = ["KEY_BYTES", "InsecureNoiseWarning", "SecureGenerator", "secure_generator"]

#: bytes of OS randomness keying each generator (256 bits, ChaCha20's key size)
KEY_BYTES = 32

# cryptography's ChaCha20 nonce: a 4-byte little-endian block counter, then a 12-byte nonce
_NONCE = bytes(16)
# 2^32 blocks of 64 bytes: past it the block counter would wrap and the keystream repeat
_MAX_BYTES = 1 << 38
_SEEDED_DOMAIN = b"torchhefl.privacy.SecureGenerator.insecure_from_seed/v1\x00"
# uniforms per Gaussian coordinate: 4 summed draws (Opacus' secure mode), 2 uniforms each
_DRAWS_PER_NORMAL = 4
_TWO_PI = 2.0 * math.pi


class InsecureNoiseWarning(UserWarning):
    """DP noise and sampling were derived from a public seed on request: anyone who knows it can
    remove the noise. For tests that compare runs draw for draw; never for real data."""


class SecureGenerator:
    """Cryptographically secure uniform and Gaussian draws for DP-SGD (see the module docstring).

    ``SecureGenerator()`` is keyed with :data:`KEY_BYTES` bytes from ``secrets.token_bytes``; two
    generators draw independent streams. The key cannot be read back.

    Example::

        >>> g = SecureGenerator()
        >>> mask = g.uniform(100) < 0.3          # a Poisson sampling mask over 100 rows
        >>> noise = g.normal((31,), std=12.75)   # N(0, 12.75^2) per coordinate, float64
    """

    def __init__(self) -> None:
        self._start(secrets.token_bytes(KEY_BYTES), seeded=False)

    @classmethod
    def insecure_from_seed(cls, *seed: int) -> "SecureGenerator":
        """A generator keyed from public integers, the same stream for the same integers. INSECURE.

        Warns with :class:`InsecureNoiseWarning`: noise drawn from it can be regenerated, and
        removed, by anyone who knows ``seed``. For tests and benchmarks that need the same draws
        twice.

        Args:
            seed: one or more integers, e.g. ``(run seed, site index, round)``.
        """
        if not seed or not all(isinstance(s, int) and not isinstance(s, bool) for s in seed):
            raise TypeError(f"insecure_from_seed takes one or more integers, got {seed!r}")
        warnings.warn(
            "DP noise and sampling derived from a public seed (insecure_seeded_noise): whoever knows the "
            "seed can remove the noise, so the differential-privacy guarantee does not hold. Tests only.",
            InsecureNoiseWarning,
            stacklevel=2,
        )
        generator = cls.__new__(cls)
        generator._start(hashlib.sha256(_SEEDED_DOMAIN + json.dumps(list(seed)).encode()).digest(), seeded=True)
        return generator

    def _start(self, key: bytes, *, seeded: bool) -> None:
        self._stream = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
        self._drawn = 0
        #: True for :meth:`insecure_from_seed` generators, whose draws anyone with the seed can repeat
        self.seeded = seeded

    @property
    def bytes_drawn(self) -> int:
        """Keystream bytes consumed so far."""
        return self._drawn

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes of the keystream."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if self._drawn + n > _MAX_BYTES:
            raise OverflowError(f"a SecureGenerator draws at most {_MAX_BYTES} bytes; use a new generator")
        self._drawn += n
        return self._stream.update(bytes(n))

    def _uniform(self, n: int) -> np.ndarray:
        words = np.frombuffer(self.random_bytes(8 * n), dtype="<u8")
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def uniform(self, n: int) -> Tensor:
        """``n`` independent uniform draws from ``[0, 1)``, float64, shape ``(n,)``.

        Each is ``k * 2**-53`` for ``k`` uniform in ``[0, 2**53)``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        return torch.from_numpy(self._uniform(n))

    def normal(self, shape: Sequence[int], *, std: float) -> Tensor:
        """Independent N(0, std^2) draws of the given shape, float64, each the sum of 4 N(0, std^2)
        draws divided by 2 (Opacus' ``secure_mode``; Holohan & Braghin 2021, section 5.1).

        Args:
            shape: the output's shape, e.g. a parameter's ``p.shape``.
            std: standard deviation, finite and >= 0.
        """
        if not (isinstance(std, (int, float)) and not isinstance(std, bool) and math.isfinite(std) and std >= 0):
            raise ValueError(f"std must be a finite number >= 0, got {std!r}")
        size = tuple(int(s) for s in shape)
        if any(s < 0 for s in size):
            raise ValueError(f"shape must not have negative sizes, got {size}")
        n = math.prod(size)
        u = self._uniform(2 * _DRAWS_PER_NORMAL * n).reshape(_DRAWS_PER_NORMAL, 2, n)
        # Box-Muller, cosine branch: 1 - u is in (0, 1], so the logarithm is finite
        z = np.sqrt(-2.0 * np.log1p(-u[:, 0])) * np.cos(_TWO_PI * u[:, 1])
        total = np.zeros(n)
        for draw in std * z:  # one N(0, std^2) row at a time, as Opacus adds its four draws
            total += draw
        return torch.from_numpy(total / 2.0).reshape(size)

    def __reduce_ex__(self, protocol):
        raise TypeError("a SecureGenerator cannot be pickled or copied: its key never leaves the process")

    def __repr__(self) -> str:
        source = "INSECURE, derived from a public seed" if self.seeded else "OS entropy"
        return f"{type(self).__name__}(key={source}, bytes_drawn={self._drawn})"


def secure_generator(generator: SecureGenerator | None) -> SecureGenerator:
    """``generator`` itself, or a fresh OS-keyed :class:`SecureGenerator` for ``None``.

    Raises :class:`TypeError` for anything else (a ``torch.Generator``, a NumPy generator): their
    draws follow from a seed, so whoever knows the seed replays the sampling and removes the noise.
    """
    if generator is None:
        return SecureGenerator()
    if not isinstance(generator, SecureGenerator):
        raise TypeError(
            f"generator must be a torchhefl.privacy.SecureGenerator, got {type(generator).__name__}: "
            "DP noise and sampling from a seeded generator can be replayed by whoever knows the seed"
        )
    return generator
