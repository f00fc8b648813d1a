"""Encryption coins derived from the private key, so that key holders decrypt sums of them fast.

When the sites hold the key (``--key-holder clients``), whoever encrypts also holds the private key.
Such a party can draw the DJN random factor ``h^a`` of each ciphertext from a pseudorandom
function keyed by a secret derived from the key, instead of from the operating system, and name
the draw by a fresh 128-bit *nonce* sent along in the clear. A key holder told which nonces, with
which integer weights, make up an aggregate recomputes its total factor ``h^A`` and removes it:
``c * h^-A = 1 + m n (mod n^2)``, so ``m = (c h^-A - 1) / n``. That is one fixed-base
exponentiation and one inversion per ciphertext instead of two full exponentiations modulo
``p^2`` and ``q^2``: about 5x less work at 2048 bits.

Security:

* Without the private key the coins are pseudorandom: BLAKE2b, salted with the nonce, over the
  ciphertext's index, keyed with ``HMAC-SHA256("torchhefl coins v1", len(p) || p || q)`` (an
  HKDF-Extract of the primes). The ciphertexts are therefore indistinguishable from DJN ciphertexts with fresh random
  coins, and the server, which never holds the key, learns nothing it did not learn before.
* A key holder learns nothing new: it can decrypt every one of these ciphertexts anyway.
* Every encryption draws a fresh random nonce (``secrets.token_bytes(16)``) inside
  :meth:`CoinKey.encrypt_ints`, which returns it with the ciphertexts, and every ciphertext in it
  has its own index, so coins do not repeat: two ciphertexts sharing coins would reveal the
  difference of their plaintexts to anyone (their quotient is ``1 + (m1 - m2) n``). No public
  function takes a nonce to encrypt with.
* The result is checked: ``c h^-A`` must be ``1 mod n``. If it is not (wrong nonces, or a
  ciphertext not made this way), :meth:`CoinKey.strip` returns ``None`` and the caller decrypts
  the usual way, so a wrong list of nonces costs time, never a wrong plaintext. A caller that
  relies on the coins to know what a ciphertext is made of (a site checking that a global model
  is the sum of signed uploads, no more and no less) asks for a strict decryption instead
  (``PrivateKey.decrypt_raw_many(..., strict=True)``, ``SecureStateDict.decrypt(coins=...)``),
  which raises rather than fall back. A ciphertext that strips over a coin list is
  ``(1 + m n) h^A``; without the coin key, a party can make one only from ciphertexts whose coins
  add up to ``A``, times any ``1 + m' n`` of its choosing (a plaintext offset, which the coins do
  not detect).

Precomputation. The random factors do not depend on the values, so they can be computed before
the values exist, between rounds: :meth:`CoinKey.precompute` draws fresh nonces and computes the
factors of the next encryptions of a given size into a pool that :meth:`CoinKey.encrypt_ints`
consumes, each batch once (it is removed from the pool before it is used), leaving about one
modular multiplication per ciphertext online. A key holder who knows an aggregate's coin list in
advance (the nonces come back from :meth:`CoinKey.precompute`) can likewise compute the inverse
of its total factor with :meth:`CoinKey.precompute_strip`, so that :meth:`CoinKey.strip` is one
multiplication per ciphertext too. Both are bounded in memory (:data:`MAX_POOLED_CIPHERTEXTS`
ciphertext factors each) and live only in this process: a ``CoinKey`` is never pickled or written.

A *coin list* describes an aggregate: ``[(nonce, weight), ...]``; ``[]`` means no random factor at
all (an encryption of a public value), ``None`` that the coins are unknown.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import gmpy2
from gmpy2 import mpz

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import _parallel
from torchhefl.secure._fastmath import AdaptiveFixedBase
from torchhefl.secure.key_sizes import coin_bits

if TYPE_CHECKING:  # coins.py sits below keys.py: it uses only the key it is given
    from torchhefl.secure.private_key import PrivateKey
    from torchhefl.secure.public_key import PublicKey

__all__ = ["MAX_COIN_TERMS", "MAX_POOLED_CIPHERTEXTS", "NONCE_BYTES", "CoinKey", "CoinList", "coins_from_wire", "coins_to_wire", "combine_coins"]

NONCE_BYTES = 16
MAX_COIN_TERMS = 1 << 12
"""Most (nonce, weight) terms a coin list on the wire may hold."""
MAX_POOLED_CIPHERTEXTS = 1 << 19
"""Most precomputed factors a coin key holds, for encryption and for stripping each (about 270 MB
at 2048 bits): a precomputation that would go beyond it raises ``MemoryError``."""
_MAX_WEIGHT = 1 << 32
_HEADROOM_BITS = 16  # weighted sums of coins up to a total weight of 2^16 use the table, larger ones powmod
_LABEL = b"torchhefl coins v1"
_ENCRYPT_SECONDS_2048 = 2e-4
_NONCE_HEX = re.compile(r"[0-9a-f]{%d}" % (2 * NONCE_BYTES))

CoinList = list[tuple[bytes, int]]


def combine_coins(parts: Sequence[tuple[CoinList | None, int]]) -> CoinList | None:
    """The coin list of ``sum(weight * aggregate)`` over ``(coin list, weight)`` pairs.

    ``None`` (unknown: decrypt the usual way) if any part's coins are unknown, or if the result
    would not fit on the wire (more than :data:`MAX_COIN_TERMS` terms, or a weight above 2^32).
    """
    out: CoinList = []
    for coins, weight in parts:
        if coins is None:
            return None
        out += [(nonce, w * weight) for nonce, w in coins]
    if len(out) > MAX_COIN_TERMS or any(w > _MAX_WEIGHT for _, w in out):
        return None
    return out


def coins_to_wire(coins: CoinList) -> list[list]:
    """A coin list as JSON: ``[[nonce hex, weight], ...]``."""
    return [[nonce.hex(), int(w)] for nonce, w in coins]


def coins_from_wire(raw) -> CoinList:
    """Parse :func:`coins_to_wire` output; raises ``MalformedMessageError`` on anything else."""
    if not isinstance(raw, list) or len(raw) > MAX_COIN_TERMS:
        raise MalformedMessageError(f"'coins' must be a list of at most {MAX_COIN_TERMS} [nonce, weight] pairs")
    out = []
    for term in raw:
        if not (isinstance(term, list) and len(term) == 2 and isinstance(term[0], str) and _NONCE_HEX.fullmatch(term[0])):
            raise MalformedMessageError(f"a coin term must be [{2 * NONCE_BYTES} lowercase hex digits, weight]")
        w = term[1]
        if not (isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= _MAX_WEIGHT):
            raise MalformedMessageError(f"a coin weight must be an integer in [1, 2^32], got {w!r}")
        out.append((bytes.fromhex(term[0]), w))
    return out


class CoinKey:
    """The coin generator of one key pair: derived from the private key, never stored or sent.

    Get it with :meth:`PrivateKey.coins`. Its random base ``h_s = (-x^2)^n mod n^2`` is derived from
    the same secret, so every holder of the key pair draws the same coins for the same nonce.
    """

    def __init__(self, private_key: PrivateKey) -> None:
        pk = private_key.public_key
        p, q = int(private_key.p), int(private_key.q)
        pb, qb = (x.to_bytes((x.bit_length() + 7) // 8, "big") for x in (p, q))
        secret = hmac.new(_LABEL, len(pb).to_bytes(4, "big") + pb + qb, hashlib.sha256).digest()
        self._public_key = pk
        self._secret = secret
        self._bits = coin_bits(pk.bits)
        self._digest = -(-self._bits // 8)
        self._hs = _base(secret, private_key)
        self._table = AdaptiveFixedBase(self._hs, pk.nsquare, self._bits + _HEADROOM_BITS)
        self._lock = threading.Lock()
        self._pool: dict[int, deque[tuple[bytes, list[mpz]]]] = {}  # ciphertext count -> ready batches
        self._pooled = 0
        self._pool_pid = os.getpid()  # a forked copy of the pool is never used (see encrypt_ints)
        self._inverses: OrderedDict[tuple, list[mpz]] = OrderedDict()  # canonical coin list -> h^-A per index
        self._inverse_count = 0

    @property
    def public_key(self) -> PublicKey:
        return self._public_key

    def __repr__(self) -> str:
        return f"CoinKey(fingerprint={self._public_key.fingerprint[:16]})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a CoinKey is derived from a private key and cannot be pickled")

    def exponents(self, nonce: bytes, count: int, start: int = 0) -> list[int]:
        """The coin exponents of ciphertexts ``start .. start + count - 1`` of the encryption ``nonce``."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce has {NONCE_BYTES} bytes, got {len(nonce)}")
        mask = (1 << self._bits) - 1
        key, size = self._secret, self._digest
        return [
            int.from_bytes(hashlib.blake2b(i.to_bytes(8, "little"), key=key, salt=nonce, digest_size=size).digest(), "little") & mask
            for i in range(start, start + count)
        ]

    def encrypt_ints(self, ms: Sequence[int]) -> tuple[bytes, list[mpz]]:
        """Encrypt integers (taken modulo ``n``) with the coins of a fresh random nonce.

        Returns ``(nonce, ciphertexts)``: the nonce names the coins (send it along, see
        :func:`coins_to_wire`). The nonce is drawn here, from the operating system, for every
        call: two plaintexts under one nonce would show anyone their difference, so no caller
        chooses it.

        A batch precomputed for ``len(ms)`` ciphertexts (:meth:`precompute`) is taken from the pool
        and used: its nonce was drawn the same way, and the batch is removed before it is used, so
        that no factor serves twice. A process forked from the one that filled the pool (which
        would hold a copy of it) never uses it.
        """
        ms = list(ms)
        with self._lock:
            self._own_pool()
            ready = self._pool.get(len(ms))
            batch = ready.popleft() if ready else None
            if batch is not None:
                self._pooled -= len(ms)
        if batch is not None:
            nonce, factors = batch
            n, n2 = self._public_key.n, self._public_key.nsquare
            return nonce, [(1 + (mpz(m) % n) * n) * r % n2 for m, r in zip(ms, factors)]
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce, self._encrypt_under(nonce, ms)

    def precompute(self, count: int, batches: int = 1) -> list[bytes]:
        """Compute the random factors of the next ``batches`` encryptions of ``count`` ciphertexts.

        Each batch gets a fresh random nonce; :meth:`encrypt_ints` of ``count`` integers then uses
        one batch (the oldest) instead of computing its factors. Returns the batches' nonces, in
        the order they will be used: a key holder that is told them ahead can prepare the
        decryption of their sums (:meth:`precompute_strip`).

        Raises ``MemoryError`` if the pool would hold more than :data:`MAX_POOLED_CIPHERTEXTS` factors.
        """
        if not (isinstance(count, int) and count >= 1 and isinstance(batches, int) and batches >= 1):
            raise ValueError(f"count and batches must be positive integers, got {count!r} and {batches!r}")
        with self._lock:
            self._own_pool()
            if self._pooled + count * batches > MAX_POOLED_CIPHERTEXTS:
                raise MemoryError(
                    f"the coin pool holds {self._pooled} factors; {count * batches} more would pass its bound "
                    f"of {MAX_POOLED_CIPHERTEXTS}: encrypt with the ones ready first"
                )
            self._pooled += count * batches
        nonces = []
        try:
            for _ in range(batches):
                nonce = secrets.token_bytes(NONCE_BYTES)
                factors = self._factors(self.exponents(nonce, count))
                with self._lock:
                    self._own_pool()
                    self._pool.setdefault(count, deque()).append((nonce, factors))
                nonces.append(nonce)
        finally:
            with self._lock:
                self._pooled -= count * (batches - len(nonces))
        return nonces

    def _own_pool(self) -> None:
        # under the lock: a process forked after the pool was filled drops its copy of it
        if self._pool_pid != os.getpid():
            self._pool.clear()
            self._pooled = 0
            self._pool_pid = os.getpid()

    def pooled(self, count: int) -> int:
        """How many precomputed batches of ``count`` ciphertexts are ready."""
        with self._lock:
            self._own_pool()
            return len(self._pool.get(count, ()))

    def clear_pool(self) -> None:
        """Forget every precomputed factor and inverse."""
        with self._lock:
            self._pool.clear()
            self._pooled = 0
            self._inverses.clear()
            self._inverse_count = 0

    def precompute_strip(self, coins: CoinList, count: int) -> None:
        """Compute, ahead, the inverse total factors of ciphertexts ``0 .. count - 1`` of an aggregate
        whose coin list is ``coins``; :meth:`strip` over the same list (in any order) uses them.

        The oldest prepared lists are dropped to stay within :data:`MAX_POOLED_CIPHERTEXTS`.
        """
        if not (isinstance(count, int) and 1 <= count <= MAX_POOLED_CIPHERTEXTS):
            raise ValueError(f"count must be an integer in [1, {MAX_POOLED_CIPHERTEXTS}], got {count!r}")
        key = _canonical(coins)
        n2 = self._public_key.nsquare
        totals = self._totals(coins, count, 0)
        table = self._table.for_count(count)
        limit = 1 << table.exp_bits

        def work(exps: Sequence[int]) -> list[mpz]:
            return [gmpy2.invert(table.pow(a) if a < limit else gmpy2.powmod(self._hs, a, n2), n2) for a in exps]

        inverses = _parallel.map_chunks(work, totals, seconds_per_item=self._seconds_per_power())
        with self._lock:
            if key in self._inverses:
                self._inverse_count -= len(self._inverses.pop(key))
            while self._inverses and self._inverse_count + count > MAX_POOLED_CIPHERTEXTS:
                self._inverse_count -= len(self._inverses.popitem(last=False)[1])
            self._inverses[key] = inverses
            self._inverse_count += count

    def _seconds_per_power(self) -> float:
        return _ENCRYPT_SECONDS_2048 * (self._public_key.bits / 2048) ** 2.5

    def _factors(self, exps: Sequence[int]) -> list[mpz]:
        """``h_s^a mod n^2`` for each exponent, in parallel when it pays."""
        table = self._table.for_count(len(exps))  # built before forking so workers inherit it

        def work(chunk: Sequence[int]) -> list[mpz]:
            return [table.pow(a) for a in chunk]

        return _parallel.map_chunks(work, list(exps), seconds_per_item=self._seconds_per_power())

    def _encrypt_under(self, nonce: bytes, ms: Sequence[int]) -> list[mpz]:
        # the coins of ``nonce``: only for a nonce drawn by encrypt_ints, never used before
        ms = list(ms)
        pk = self._public_key
        n, n2 = pk.n, pk.nsquare
        exps = self.exponents(nonce, len(ms))
        table = self._table.for_count(len(ms))  # built before forking so workers inherit it

        def work(pairs: Sequence[tuple[int, int]]) -> list[mpz]:
            return [(1 + (mpz(m) % n) * n) * table.pow(a) % n2 for m, a in pairs]

        return _parallel.map_chunks(work, list(zip(ms, exps)), seconds_per_item=self._seconds_per_power())

    def _totals(self, coins: CoinList, count: int, start: int) -> list[int]:
        totals = [0] * count
        for nonce, weight in coins:
            for i, a in enumerate(self.exponents(nonce, count, start)):
                totals[i] += weight * a
        return totals

    def strip(self, cts: Sequence[int], coins: CoinList, start: int = 0) -> list[mpz] | None:
        """The plaintexts in ``[0, n)`` of ciphertexts whose coins are ``coins``, or ``None``.

        ``cts`` are ciphertexts ``start, start + 1, ...`` of the encryptions the coin list names.
        ``None`` if any ciphertext is not of that form (the caller then decrypts it the usual way).
        """
        pk = self._public_key
        n, n2 = pk.n, pk.nsquare
        with self._lock:
            inverses = self._inverses.get(_canonical(coins)) if coins else None
        if inverses is not None and start + len(cts) <= len(inverses):
            return _plaintexts([mpz(c) * r % n2 for c, r in zip(cts, inverses[start:])], n)
        totals = self._totals(coins, len(cts), start)
        table = self._table.for_count(len(cts))
        limit = 1 << table.exp_bits
        out = []
        for c, a in zip(cts, totals):
            if not a:
                x = mpz(c)
            else:
                r = table.pow(a) if a < limit else gmpy2.powmod(self._hs, a, n2)
                x = mpz(c) * gmpy2.invert(r, n2) % n2
            out.append(x)
        return _plaintexts(out, n)


def _canonical(coins: CoinList) -> tuple:
    return tuple(sorted((bytes(nonce), int(w)) for nonce, w in coins))


def _plaintexts(stripped: Sequence[mpz], n: mpz) -> list[mpz] | None:
    """``m`` from each ``1 + m n``, or ``None`` if one is not of that form."""
    out = []
    for x in stripped:
        m, rest = gmpy2.f_divmod(x - 1, n)
        if rest or not 0 <= m < n:
            return None
        out.append(m)
    return out


def _base(secret: bytes, private_key: PrivateKey) -> mpz:
    """``h_s = (-x^2)^n mod n^2`` for an ``x`` drawn from ``secret``."""
    n = private_key.public_key.n
    for counter in range(1 << 16):
        stream = hashlib.shake_256(secret + b"base" + counter.to_bytes(4, "little")).digest((int(n.bit_length()) + 128) // 8)
        x = mpz(int.from_bytes(stream, "little")) % n
        if x > 1 and gmpy2.gcd(x, n) == 1:
            return _nth_power(-x * x % n, private_key)
    raise RuntimeError("could not derive a coin base")  # pragma: no cover - 2^16 draws sharing a factor with n


def _nth_power(h: mpz, private_key: PrivateKey) -> mpz:
    """``h^n mod n^2`` by the Chinese remainder theorem (four half-size exponentiations, two at a time)."""
    p, q = private_key.p, private_key.q
    p2, q2 = p * p, q * q
    # modulo p^2 the group is cyclic of order p(p-1): h^p lies in the subgroup of order dividing
    # p - 1, so h^(pq) = (h^p)^(q mod (p-1)); likewise modulo q^2
    (hp,), (hq,) = _parallel.powmod_lists([([h % p2], p, p2), ([h % q2], q, q2)], seconds_per_item=1e-3)
    (sp,), (sq,) = _parallel.powmod_lists([([hp], q % (p - 1), p2), ([hq], p % (q - 1), q2)], seconds_per_item=1e-3)
    return sq + q2 * ((sp - sq) * gmpy2.invert(q2, p2) % p2)
