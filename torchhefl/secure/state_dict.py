"""SecureStateDict: a model's ``state_dict`` encrypted in the packed encoding, for exchange and FedAvg.

Floating tensors are packed at 2^-24 resolution (|v| < 8192), integer and bool buffers (such as
BatchNorm's ``num_batches_tracked``) exactly (|v| < 2^37); both share the slots (see
:mod:`torchhefl.secure.packing`). Each SecureStateDict also carries an encrypted *weight* (1 unless
given) in the slot after the last value, so that every aggregation scales and sums it with the
values at no extra cost; :meth:`decrypt` divides by the
decrypted total weight, so

* ``SecureStateDict.weighted_average(encs, weights=[n1, n2, n3]).decrypt(sk)`` is FedAvg, the
  server choosing the weights, and
* ``SecureStateDict.encrypt(state, pk, weight=n_i)`` on each client followed by
  ``weighted_average(encs)`` (plain sum) is FedAvg with the sample counts hidden from the server.

Integer buffers are averaged with the same weights and rounded to the nearest integer (half up).
The total weight must stay at most :data:`~torchhefl.secure.packing.MAX_TOTAL_WEIGHT` (2^24 - 1);
it is checked against public per-message bounds before any arithmetic.

An encryptor holding the private key may pass ``coins=private_key.coins()``: the header then names
the nonce of its coins, sums carry the nonces (scaled by their weights), and :meth:`decrypt`
removes the known random factors instead of running the full decryption; see
:mod:`torchhefl.secure.coins`.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import gmpy2
import numpy as np
import torch
from gmpy2 import mpz

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.secure import _parallel, packing, wire
from torchhefl.secure.coins import CoinKey, CoinList, coins_from_wire, coins_to_wire, combine_coins
from torchhefl.secure.container import WireContainer, check_private_key, check_public_key, is_int
from torchhefl.secure.encoding import STATE_DICT_FIXED_POINT, FixedPoint
from torchhefl.secure.keys import PrivateKey, PublicKey
from torchhefl.secure.shapes import numel

__all__ = ["SecureStateDict"]

_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64,
        torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
    )
}
_POWMOD_SECONDS_2048 = 6e-5
_MODMUL_SECONDS_2048 = 6e-6


def _encoding(public_key: PublicKey, fp: FixedPoint) -> dict:
    return {
        "name": "packed-fixed-point",
        "scale": fp.scale_bits,
        "mag_bits": fp.mag_bits,
        "weight_bits": fp.headroom_bits,
        "slot_bits": fp.slot_bits,
        "slots": packing.slots_per_plaintext(public_key.bits, fp.slot_bits),
    }


def _check_weight(w, what: str) -> int:
    if isinstance(w, torch.Tensor) and w.numel() == 1 and not w.is_floating_point():
        w = int(w.item())
    if isinstance(w, np.integer):
        w = int(w)
    if not is_int(w):
        raise TypeError(f"{what} must be a non-negative integer such as a sample count, got {w!r}")
    if w < 0:
        raise ValueError(f"{what} must be non-negative, got {w}")
    return w


class SecureStateDict(WireContainer):
    """An encrypted, packed ``state_dict`` bound to one public key.

    Build with :meth:`encrypt` or :meth:`from_bytes`; combine with :meth:`weighted_average`
    (no private key needed); read with :meth:`decrypt`.
    """

    WIRE_KIND = "torchhefl.SecureStateDict"
    WIRE_FORMAT = 2
    WIRE_FIELDS = frozenset({"format", "fingerprint", "key_bits", "encoding", "weight_bound", "entries"})
    WIRE_OPTIONAL_FIELDS = frozenset({"coins"})
    FIXED_POINT = STATE_DICT_FIXED_POINT

    def __init__(self, public_key, entries, ciphertexts, weight_bound, coins: CoinList | None = None,
                 fp: FixedPoint = STATE_DICT_FIXED_POINT):
        # private: use encrypt / from_bytes / weighted_average. The last slot holds the weight.
        # ``coins``: the coin list (see torchhefl.secure.coins) when the random factors are known
        self._pk: PublicKey = public_key
        self._entries: list[tuple[str, tuple[int, ...], str]] = entries
        self._cts: list[mpz] = ciphertexts
        self._weight_bound: int = weight_bound
        self._coins: CoinList | None = coins
        self._fp: FixedPoint = fp  # the packed encoding (precision) of the slots

    # -- properties -----------------------------------------------------------------------------
    @property
    def weight_bound(self) -> int:
        """Public upper bound on the (encrypted) total weight."""
        return self._weight_bound

    @property
    def num_values(self) -> int:
        """Number of scalar values (parameters and buffers) held."""
        return sum(numel(shape) for _, shape, _ in self._entries)

    @property
    def num_ciphertexts(self) -> int:
        """Ciphertexts holding the values and, in the slot after them, the weight."""
        return len(self._cts)

    @property
    def precision(self) -> FixedPoint:
        """The packed encoding of the values: resolution ``2^-scale_bits``, range, weight headroom (public)."""
        return self._fp

    @property
    def coins(self) -> CoinList | None:
        """The coin list of the header: ``[(nonce, weight), ...]`` naming the random factors
        (``[]``: none, a public encryption; ``None``: unknown). Public: it is in the header."""
        return None if self._coins is None else list(self._coins)

    def keys(self) -> list[str]:
        """The state dict's keys, in order."""
        return [name for name, _, _ in self._entries]

    def layout(self) -> list[tuple[str, tuple[int, ...], str]]:
        """``(name, shape, dtype name)`` of each entry, in order (public: it is in the header)."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"SecureStateDict(entries={len(self._entries)}, values={self.num_values}, "
            f"ciphertexts={len(self._cts)}, key={self._pk.fingerprint[:16]})"
        )

    # -- encrypt --------------------------------------------------------------------------------
    @staticmethod
    def num_ciphertexts_for(
        state_dict: Mapping[str, torch.Tensor], public_key: PublicKey, precision: FixedPoint = STATE_DICT_FIXED_POINT
    ) -> int:
        """How many ciphertexts :meth:`encrypt` makes of ``state_dict`` under ``public_key``: the size
        to give :meth:`CoinKey.precompute <torchhefl.secure.coins.CoinKey.precompute>` to prepare
        the random factors of its encryption ahead."""
        values = sum(int(t.numel()) for t in state_dict.values()) + 1  # the weight takes a slot
        slots = packing.slots_per_plaintext(public_key.bits, packing.check_encoding(precision).slot_bits)
        return -(-values // slots)

    @classmethod
    def encrypt(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        public_key: PublicKey,
        *,
        weight: int = 1,
        weight_bound: int | None = None,
        coins: CoinKey | None = None,
        public: bool = False,
        precision: FixedPoint = STATE_DICT_FIXED_POINT,
        rounding: str = "nearest",
    ) -> SecureStateDict:
        """Encrypt a ``state_dict`` (packed), each value pre-multiplied by the integer ``weight``.

        Args:
            state_dict: name -> tensor; floating tensors need ``|v| < 8192``, integer ones ``|v| < 2^37``.
            public_key: key to encrypt under.
            weight: integer weight (e.g. this client's sample count), default 1; it is encrypted too.
            weight_bound: public upper bound on ``weight`` used for overflow checks (default:
                ``weight`` itself). Pass a public cap (e.g. the largest possible sample count) to keep
                the weight hidden.
            coins: the key pair's :meth:`PrivateKey.coins` (for an encryptor holding the private key):
                the random factors are derived from it, so key holders decrypt sums of such state
                dicts several times faster (see :mod:`torchhefl.secure.coins`). Default: OS randomness.
            public: no random factor at all, for values that are public anyway (such as an initial
                model drawn before any data is seen): the ciphertexts reveal the values to anyone.
            precision: the packed encoding (:func:`torchhefl.secure.packing.precision`); default
                resolution 2^-24, ``|v| < 8192``, total weight below 2^24, 33 slots per 2048-bit
                ciphertext. Every state dict of one sum must use the same one.
            rounding: ``"nearest"`` (default: error at most half the resolution) or
                ``"stochastic"`` (unbiased: rounds up with the probability of the remainder, drawn
                from the operating system's randomness, as BatchCrypt does for coarse encodings).
        """
        check_public_key(public_key)
        fp = packing.check_encoding(precision)
        if rounding not in packing.ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(packing.ROUNDINGS)}, got {rounding!r}")
        if coins is not None:
            if not isinstance(coins, CoinKey):
                raise TypeError(f"coins must be a CoinKey (PrivateKey.coins()), not {type(coins).__name__}")
            if coins.public_key != public_key:
                raise KeyMismatchError("the coin key belongs to another key pair")
            if public:
                raise ValueError("an encryption is either public or uses coins, not both")
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"expected a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}")
        weight = _check_weight(weight, "weight")
        if weight == 0:
            raise ValueError("weight must be at least 1")
        weight_bound = weight if weight_bound is None else _check_weight(weight_bound, "weight_bound")
        if not weight <= weight_bound <= fp.max_total_weight:
            raise OverflowError(
                f"need weight <= weight_bound <= {fp.max_total_weight}, got weight={weight}, "
                f"weight_bound={weight_bound}"
            )
        generator = None
        if rounding == "stochastic":
            generator = torch.Generator().manual_seed(secrets.randbits(63))
        entries, chunks = [], []
        for name, t in state_dict.items():
            if not isinstance(name, str):
                raise TypeError(f"state_dict keys must be strings, got {name!r}")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
            dtype = str(t.dtype).removeprefix("torch.")
            if dtype not in _DTYPES:
                raise TypeError(f"state_dict[{name!r}] has dtype {t.dtype}, which cannot be encrypted")
            entries.append((name, tuple(t.shape), dtype))
            chunks.append(_quantize_entry(name, t.detach().cpu(), fp, generator))
        m = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        u = (m + (1 << fp.mag_bits)).astype(np.uint64) * np.uint64(weight)
        u = np.append(u, np.uint64(weight))
        slots = packing.slots_per_plaintext(public_key.bits, fp.slot_bits)
        plaintexts = packing.pack(u, slots, fp.slot_bits)
        if public:
            cts = [public_key.encrypt_int(m, obfuscate=False) for m in plaintexts]
            return cls(public_key, entries, cts, weight_bound, [], fp)
        if coins is not None:
            nonce, cts = coins.encrypt_ints(plaintexts)
            return cls(public_key, entries, cts, weight_bound, [(nonce, 1)], fp)
        return cls(public_key, entries, public_key.encrypt_ints(plaintexts), weight_bound, fp=fp)

    # -- aggregate ------------------------------------------------------------------------------
    @classmethod
    def weighted_average(
        cls, items: Sequence[SecureStateDict], weights: Sequence[int] | None = None
    ) -> SecureStateDict:
        """Combine encrypted state dicts: ``sum_i weights[i] * items[i]`` (values and weights alike).

        Needs no private key. Decrypting the result divides by the total weight, giving FedAvg.

        Args:
            items: state dicts encrypted under one key, with the same keys, shapes and dtypes.
            weights: non-negative integers (e.g. sample counts), or ``None`` for a plain sum.

        Raises:
            KeyMismatchError: items under different keys.
            ValueError: items with different layouts, or a wrong number of weights.
            OverflowError: the total weight bound would exceed ``MAX_TOTAL_WEIGHT``.
        """
        items = list(items)
        if not items:
            raise ValueError("weighted_average needs at least one SecureStateDict")
        for it in items:
            if not isinstance(it, SecureStateDict):
                raise TypeError(f"expected SecureStateDict items, got {type(it).__name__}")
        first = items[0]
        for it in items[1:]:
            if it._pk != first._pk:
                raise KeyMismatchError("SecureStateDicts under different public keys cannot be combined")
            if it._entries != first._entries:
                raise ValueError("SecureStateDicts with different keys, shapes or dtypes cannot be combined")
            if it._fp != first._fp:
                raise ValueError("SecureStateDicts encrypted with different precisions cannot be combined")
        if weights is None:
            ws = [1] * len(items)
        else:
            ws = [_check_weight(w, "each weight") for w in weights]
            if len(ws) != len(items):
                raise ValueError(f"got {len(ws)} weights for {len(items)} state dicts")
            if not any(ws):
                raise ValueError("at least one weight must be positive")
        bound = sum(w * it._weight_bound for w, it in zip(ws, items))
        fp = first._fp
        if bound > fp.max_total_weight:
            raise OverflowError(
                f"total weight could reach {bound}, beyond the packed encoding's limit of "
                f"{fp.max_total_weight} (2^{fp.headroom_bits} - 1); use smaller integer weights"
            )
        pairs = [(it, w) for it, w in zip(items, ws) if w]
        n2 = first._pk.nsquare

        def combine(columns: Sequence[Sequence[mpz]]) -> list[mpz]:
            out = []
            for col in columns:
                acc = None
                for c, (_, w) in zip(col, pairs):
                    x = c if w == 1 else gmpy2.powmod(c, w, n2)
                    acc = x if acc is None else acc * x % n2
                out.append(acc)
            return out

        columns = list(zip(*[it._cts for it, _ in pairs])) if first._cts else []
        # a weight of 1 is one multiplication, another weight a small exponentiation
        per_item = sum(_MODMUL_SECONDS_2048 if w == 1 else _POWMOD_SECONDS_2048 for _, w in pairs)
        per_item *= (first._pk.bits / 2048.0) ** 2
        cts = _parallel.map_chunks(combine, columns, seconds_per_item=per_item)
        coins = combine_coins([(it._coins, w) for it, w in pairs])
        return cls(first._pk, list(first._entries), cts, bound, coins, fp)

    def rerandomize(self) -> SecureStateDict:
        """The same values and weight under fresh randomness."""
        cts = self._pk.rerandomize_ints(self._cts)
        return SecureStateDict(self._pk, list(self._entries), cts, self._weight_bound, fp=self._fp)

    # -- decrypt --------------------------------------------------------------------------------
    def decrypt_weight(self, private_key: PrivateKey) -> int:
        """The total weight (e.g. the sum of the clients' sample counts)."""
        check_private_key(private_key, self._pk, "the state dict's")
        slot_bits = self._fp.slot_bits
        slots = packing.slots_per_plaintext(self._pk.bits, slot_bits)
        first_slot = (len(self._cts) - 1) * slots
        last_ct = private_key.decrypt_raw_many(self._cts[-1:], coins=self._coins, start=len(self._cts) - 1)
        last = packing.unpack(last_ct, slots, self.num_values + 1 - first_slot, slot_bits)
        return self._checked_weight(last[-1])

    def _checked_weight(self, w) -> int:
        w = int(w)
        if not 1 <= w <= self._weight_bound:
            raise OverflowError(
                f"decrypted total weight is outside [1, {self._weight_bound}]: corrupt ciphertext or metadata"
            )
        return int(w)

    def decrypt(
        self, private_key: PrivateKey, *, average: bool = True, coins: CoinList | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """Decrypt to an ``OrderedDict`` with the original keys, order, shapes and dtypes.

        Args:
            private_key: the key pair's private half.
            average: divide by the total weight (default), giving the (weighted) mean; with
                ``False`` return the weighted sum.
            coins: the coin list the ciphertexts must be made of, exactly (e.g. the nonces of the
                uploads a sum claims to combine, each with weight 1): the header must name these
                terms and no others, in any order, and every ciphertext must strip over them; no
                fallback to the full decryption. Default: the header's coin list, with the fallback.

        Raises:
            KeyMismatchError: ``private_key`` does not match.
            OverflowError: a slot holds a value no valid aggregate can hold (corruption or overflow).
            ValueError: with ``coins``, the header names other coins, or the ciphertexts are not
                made of them.
        """
        check_private_key(private_key, self._pk, "the state dict's")
        if coins is not None:
            if self._coins is None or sorted(self._coins) != sorted(coins):
                named = "no coin list" if self._coins is None else f"a coin list of {len(self._coins)} terms"
                raise ValueError(f"the header names {named}, not exactly the {len(coins)} terms expected")
            raw = private_key.decrypt_raw_many(self._cts, coins=list(coins), strict=True)
        else:
            raw = private_key.decrypt_raw_many(self._cts, coins=self._coins)
        fp = self._fp
        slots = packing.slots_per_plaintext(self._pk.bits, fp.slot_bits)
        count = self.num_values
        u = packing.unpack(raw, slots, count + 1, fp.slot_bits)
        W = self._checked_weight(u[-1])
        u = u[:-1]
        if (u >= np.uint64(1 << fp.slot_bits)).any():
            raise OverflowError("a packed slot is out of range: corrupt ciphertext or metadata")
        off = W * (1 << fp.mag_bits)
        s = u.astype(np.int64) - np.int64(off)
        if count and (np.abs(s) >= off).any():
            raise OverflowError("a packed value exceeds its range after aggregation: corrupt ciphertext or metadata")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        pos = 0
        for name, shape, dtype_name in self._entries:
            k = numel(shape)
            seg = s[pos : pos + k]
            pos += k
            dtype = _DTYPES[dtype_name]
            if dtype.is_floating_point:
                denom = float(W) * 2.0**fp.scale_bits if average else 2.0**fp.scale_bits
                vals = torch.from_numpy(seg.astype(np.float64) / denom)
            else:
                vals = torch.from_numpy(np.floor_divide(2 * seg + W, 2 * W) if average else seg.copy())
                if dtype == torch.bool:
                    vals = vals != 0
            out[name] = vals.to(dtype).reshape(shape)
        return out

    # -- wire -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise to the torchhefl wire format."""
        fields = {
            "encoding": _encoding(self._pk, self._fp),
            "weight_bound": self._weight_bound,
            "entries": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self._entries],
        }
        if self._coins is not None:
            fields["coins"] = coins_to_wire(self._coins)
        return self._encode(fields, self._cts)

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        *,
        public_key: PublicKey,
        max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES,
        precision: FixedPoint = STATE_DICT_FIXED_POINT,
    ) -> SecureStateDict:
        """Parse and check bytes from :meth:`to_bytes`; they must name ``public_key`` and ``precision``.

        The precision is agreed in advance, like the key: a header naming another encoding is
        refused, so that whoever relays the bytes cannot have them read in another one.

        Raises:
            MalformedMessageError: anything malformed (truncated, corrupted, out of range, bad version).
            KeyMismatchError: the message is bound to another key.
        """
        check_public_key(public_key)
        with cls._parsing():
            msg = cls._decode_header(blob, public_key, max_bytes)
            meta = msg.meta
            fp = packing.check_encoding(precision)
            if meta["encoding"] != _encoding(public_key, fp):
                raise MalformedMessageError(f"unsupported encoding parameters {meta['encoding']!r}")
            wb = meta["weight_bound"]
            if not is_int(wb) or not 1 <= wb <= fp.max_total_weight:
                raise MalformedMessageError(f"weight_bound {wb!r} is out of range [1, {fp.max_total_weight}]")
            entries = _parse_entries(meta["entries"])
            total = sum(numel(s) for _, s, _ in entries)
            slots = packing.slots_per_plaintext(public_key.bits, fp.slot_bits)
            cts = cls._read_ciphertexts(msg, public_key, -(-(total + 1) // slots))
            coins = coins_from_wire(meta["coins"]) if "coins" in meta else None
            return cls(public_key, entries, cts, wb, coins, fp)


def _parse_entries(raw) -> list[tuple[str, tuple[int, ...], str]]:
    if not isinstance(raw, list):
        raise MalformedMessageError("'entries' must be a list")
    entries, seen, total = [], set(), 0
    for e in raw:
        if not isinstance(e, dict) or set(e) != {"name", "shape", "dtype"}:
            raise MalformedMessageError("each entry must hold exactly 'name', 'shape' and 'dtype'")
        name, shape, dtype = e["name"], e["shape"], e["dtype"]
        if not isinstance(name, str) or name in seen:
            raise MalformedMessageError(f"entry name {name!r} is not a string or appears twice")
        if not isinstance(shape, list) or len(shape) > 32 or not all(is_int(d) and 0 <= d < 2**40 for d in shape):
            raise MalformedMessageError(f"entry {name!r}: invalid shape {shape!r}")
        if dtype not in _DTYPES:
            raise MalformedMessageError(f"entry {name!r}: unsupported dtype {dtype!r}")
        total += numel(shape)
        if total > 2**40:
            raise MalformedMessageError("the entries hold implausibly many values")
        seen.add(name)
        entries.append((name, tuple(shape), dtype))
    return entries


def _quantize_entry(name: str, t: torch.Tensor, fp: FixedPoint, generator: torch.Generator | None) -> np.ndarray:
    offset = 1 << fp.mag_bits
    if t.is_complex():
        raise TypeError(f"state_dict[{name!r}] is complex, which cannot be encrypted")
    if t.is_floating_point():
        v = t.to(torch.float64).reshape(-1)
        if v.numel() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"state_dict[{name!r}] contains NaN or infinite values")
        x = v * 2.0**fp.scale_bits
        m = torch.round(x) if generator is None else torch.floor(x + torch.rand(x.shape, generator=generator, dtype=x.dtype))
        if m.numel() and float(m.abs().max()) >= offset:
            raise OverflowError(
                f"state_dict[{name!r}] has a value of magnitude {float(v.abs().max()):.6g}; the packed encoding "
                f"holds |v| < {fp.max_abs_value:g}"
            )
        return m.to(torch.int64).numpy()
    m = t.to(torch.int64).reshape(-1).numpy()
    if m.size and np.abs(m).max() >= offset:
        raise OverflowError(f"state_dict[{name!r}] has an integer of magnitude >= 2^{fp.mag_bits}")
    return m
