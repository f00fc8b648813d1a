"""EncryptedTensor: an unpacked Paillier tensor (one fixed-point value per ciphertext).

It supports exactly what Paillier can do with plaintext operands (``+``, ``-``, ``*`` and ``/`` by
plaintexts, ``plain @ encrypted``, ``encrypted @ plain``, ``sum``, unary ``-``), with torch's
broadcasting rules, so that linear code written for ``torch.Tensor`` (such as
``torchhefl.nn.functional.taylor_grad``) runs on it unchanged.

Every tensor carries its fixed-point ``scale`` (value = m / 2^scale) and ``bound_bits``, a public
upper bound on ``log2 |m|`` that each operation updates; an operation whose result could leave the
key's safe plaintext range raises ``OverflowError`` before it runs (:attr:`headroom_bits` says how
much is left), and decryption detects any value in the guard band.
"""

from __future__ import annotations

from collections.abc import Sequence

import gmpy2
import torch
from gmpy2 import mpz

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.secure import wire
from torchhefl.secure.container import (  # the codec and fingerprint check, re-exported from here as before
    WireContainer,
    array_to_cts,
    check_fingerprint,
    check_private_key,
    check_public_key,
    cts_to_array,
    is_int,
)
from torchhefl.secure.encoding import (
    DEFAULT_PLAIN_BITS,
    DEFAULT_SCALE,
    TENSOR_FIXED_POINT,
    as_plain_tensor,
    dequantize,
    plain_scale,
    quantize,
)
from torchhefl.secure.keys import PrivateKey, PublicKey
from torchhefl.secure.matmul import plan_matmul, run_matmul
from torchhefl.secure.shapes import broadcast_shape, check_shape, flat_index, numel

__all__ = ["DEFAULT_VALUE_BITS", "EncryptedTensor", "array_to_cts", "check_fingerprint", "cts_to_array"]

DEFAULT_VALUE_BITS = TENSOR_FIXED_POINT.value_bits  # 16
"""Bits of integer part assumed public when a tensor is encrypted: ``bound_bits`` starts at
``scale + DEFAULT_VALUE_BITS`` unless the values are larger, so the bound does not reveal them."""

_MAX_DIMS = 32


def _bitlen(x: int) -> int:
    return int(abs(int(x))).bit_length()


class EncryptedTensor(WireContainer):
    """A tensor of Paillier ciphertexts, one fixed-point value each, row-major.

    Build one with :meth:`encrypt`, :meth:`encrypt_ints`, :meth:`from_ciphertexts` or
    :meth:`from_bytes`. Attributes: ``public_key``, ``shape`` (``torch.Size``), ``scale`` (bits),
    ``bound_bits`` (public bound on ``log2 |m|``), ``ciphertexts`` (flat list of ``gmpy2.mpz``).
    """

    __array_ufunc__ = None  # make numpy defer to the reflected operators
    WIRE_KIND = "torchhefl.EncryptedTensor"
    WIRE_FORMAT = 1
    WIRE_FIELDS = frozenset({"format", "fingerprint", "key_bits", "shape", "scale", "bound_bits"})
    WIRE_ARTICLE = "an"
    FIXED_POINT = TENSOR_FIXED_POINT

    def __init__(self, public_key: PublicKey, ciphertexts: list[mpz], shape: torch.Size, scale: int, bound_bits: int):
        # private: use the classmethods, which check their inputs
        self._pk = public_key
        self._cts = ciphertexts
        self._shape = torch.Size(shape)
        self._scale = int(scale)
        self._bound = int(bound_bits)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def encrypt(
        cls,
        tensor,
        public_key: PublicKey,
        *,
        scale: int = DEFAULT_SCALE,
        value_bits: int = DEFAULT_VALUE_BITS,
    ) -> EncryptedTensor:
        """Encrypt a real tensor (or number) at fixed-point ``scale`` (default 32 bits).

        Args:
            tensor: values to encrypt, any shape; floats or integers.
            public_key: the key to encrypt under.
            scale: bits after the binary point (resolution ``2^-scale``); default 32.
            value_bits: public bound on the integer part, ``|v| < 2^value_bits`` (default 16), used
                for ``bound_bits`` so the metadata does not reveal the values' size; larger values
                still encrypt and raise the bound accordingly.
        """
        check_public_key(public_key)
        t = as_plain_tensor(tensor)
        if t is None:
            raise TypeError(f"cannot encrypt a {type(tensor).__name__}; pass a tensor, array or number")
        _check_scale(scale, public_key)
        ints = quantize(t, scale)
        bound = max([scale + int(value_bits)] + [_bitlen(m) for m in ints])
        return cls.encrypt_ints(ints, t.shape, public_key, scale=scale, bound_bits=bound)

    @classmethod
    def encrypt_ints(
        cls, ints: Sequence[int], shape, public_key: PublicKey, *, scale: int, bound_bits: int
    ) -> EncryptedTensor:
        """Encrypt exact integers ``ints`` (row-major, ``prod(shape)`` of them), e.g. masks.

        ``bound_bits`` must bound every ``|m|``: ``|m| < 2^bound_bits``.
        """
        check_public_key(public_key)
        shape = check_shape(shape)
        ints = [int(m) for m in ints]
        if len(ints) != numel(shape):
            raise ValueError(f"{len(ints)} integers do not fill shape {tuple(shape)}")
        _check_scale(scale, public_key)
        _check_bound(bound_bits, public_key)
        limit = 1 << int(bound_bits)
        if any(not -limit < m < limit for m in ints):
            raise OverflowError(f"an integer exceeds the declared bound |m| < 2^{bound_bits}")
        return cls(public_key, public_key.encrypt_ints(ints), shape, scale, bound_bits)

    @classmethod
    def from_ciphertexts(
        cls, public_key: PublicKey, ciphertexts: Sequence[int], shape, *, scale: int, bound_bits: int
    ) -> EncryptedTensor:
        """Wrap existing ciphertexts (row-major) with their encoding parameters."""
        check_public_key(public_key)
        shape = check_shape(shape)
        cts = [mpz(c) for c in ciphertexts]
        if len(cts) != numel(shape):
            raise ValueError(f"{len(cts)} ciphertexts do not fill shape {tuple(shape)}")
        for c in cts:
            public_key.check_ciphertext(c)
        _check_scale(scale, public_key)
        _check_bound(bound_bits, public_key)
        return cls(public_key, cts, shape, scale, bound_bits)

    # -- attributes -----------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def dim(self) -> int:
        return len(self._shape)

    def size(self, dim: int | None = None):
        return self._shape if dim is None else self._shape[dim]

    @property
    def scale(self) -> int:
        """Fixed-point scale in bits: value = m / 2^scale."""
        return self._scale

    @property
    def bound_bits(self) -> int:
        """Public upper bound on ``log2 |m|`` of every element."""
        return self._bound

    @property
    def headroom_bits(self) -> int:
        """Bits of growth left before the key's safe plaintext range is reached."""
        return self._pk.max_bits - self._bound

    @property
    def ciphertexts(self) -> list[mpz]:
        """The ciphertexts, row-major (a new list)."""
        return list(self._cts)

    def numel(self) -> int:
        return len(self._cts)

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d encrypted tensor")
        return self._shape[0]

    def __repr__(self) -> str:
        return (
            f"EncryptedTensor(shape={tuple(self._shape)}, scale={self._scale}, bound_bits={self._bound}, "
            f"key={self._pk.fingerprint[:16]})"
        )

    # -- shape manipulation -----------------------------------------------------------------------
    def _take(self, index: torch.Tensor) -> EncryptedTensor:
        flat = index.reshape(-1).tolist()
        return EncryptedTensor(self._pk, [self._cts[i] for i in flat], index.shape, self._scale, self._bound)

    def _index_grid(self) -> torch.Tensor:
        return torch.arange(len(self._cts), dtype=torch.int64).reshape(self._shape)

    def __getitem__(self, key) -> EncryptedTensor:
        try:
            return self._take(self._index_grid()[key])
        except IndexError as e:
            raise IndexError(str(e)) from None

    def reshape(self, *shape) -> EncryptedTensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        return self._take(self._index_grid().reshape(*shape))

    view = reshape

    def flatten(self) -> EncryptedTensor:
        return self.reshape(-1)

    def unsqueeze(self, dim: int) -> EncryptedTensor:
        return self._take(self._index_grid().unsqueeze(dim))

    def squeeze(self, dim: int | None = None) -> EncryptedTensor:
        g = self._index_grid()
        return self._take(g.squeeze() if dim is None else g.squeeze(dim))

    def clone(self) -> EncryptedTensor:
        return EncryptedTensor(self._pk, list(self._cts), self._shape, self._scale, self._bound)

    # -- randomness -----------------------------------------------------------------------------
    def rerandomize(self) -> EncryptedTensor:
        """The same values under fresh randomness (do this before a derived ciphertext leaves a party)."""
        return EncryptedTensor(self._pk, self._pk.rerandomize_ints(self._cts), self._shape, self._scale, self._bound)

    # -- decryption -----------------------------------------------------------------------------
    def decrypt_ints(self, private_key: PrivateKey) -> list[int]:
        """The signed integers ``m`` (value * 2^scale), row-major; ``OverflowError`` on overflow."""
        check_private_key(private_key, self._pk, "the tensor's")
        ints = private_key.decrypt_ints(self._cts, bound_bits=self._bound)
        limit = 1 << self._bound
        if any(not -limit < m < limit for m in ints):
            raise OverflowError(
                f"a decrypted value exceeds the tensor's bound of 2^{self._bound}: corrupt ciphertext or metadata"
            )
        return ints

    def decrypt(self, private_key: PrivateKey) -> torch.Tensor:
        """The values as a ``torch.float64`` tensor of this tensor's shape."""
        return dequantize(self.decrypt_ints(private_key), self._scale).reshape(self._shape)

    # -- operand handling -----------------------------------------------------------------------
    def _same_key(self, other: EncryptedTensor) -> None:
        if other._pk != self._pk:
            raise KeyMismatchError("encrypted tensors under different public keys cannot be combined")

    def _checked(self, bits: int, what: str) -> int:
        if bits > self._pk.max_bits:
            raise OverflowError(
                f"{what} could need {bits} bits, beyond the key's safe plaintext range of {self._pk.max_bits} "
                f"bits (headroom {self.headroom_bits}); refresh (re-encrypt) the tensor or use a smaller scale"
            )
        return bits

    def _rescaled(self, scale: int) -> tuple[list[mpz], int]:
        """Ciphertexts at a higher ``scale`` (multiplied by 2^k) and their new bound."""
        k = scale - self._scale
        if k == 0:
            return self._cts, self._bound
        bound = self._checked(self._bound + k, "aligning scales")
        e, n2 = mpz(1) << k, self._pk.nsquare
        return [gmpy2.powmod(c, e, n2) for c in self._cts], bound

    # -- addition -------------------------------------------------------------------------------
    def __add__(self, other) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            self._same_key(other)
            out_shape = broadcast_shape(self._shape, other._shape)
            scale = max(self._scale, other._scale)
            a, ba = self._rescaled(scale)
            b, bb = other._rescaled(scale)
            bound = self._checked(max(ba, bb) + 1, "the sum")
            ia, ib = flat_index(self._shape, out_shape), flat_index(other._shape, out_shape)
            n2 = self._pk.nsquare
            return EncryptedTensor(self._pk, [a[i] * b[j] % n2 for i, j in zip(ia, ib)], out_shape, scale, bound)
        t = as_plain_tensor(other)
        if t is None:
            return NotImplemented
        out_shape = broadcast_shape(self._shape, t.shape)
        scale = max(self._scale, plain_scale(t))
        ms = quantize(t, scale)
        a, ba = self._rescaled(scale)
        bound = self._checked(max([ba] + [_bitlen(m) for m in ms]) + 1, "the sum")
        ia, ib = flat_index(self._shape, out_shape), flat_index(t.shape, out_shape)
        n, n2 = self._pk.n, self._pk.nsquare
        gm = [(1 + (mpz(m) % n) * n) % n2 for m in ms]
        return EncryptedTensor(self._pk, [a[i] * gm[j] % n2 for i, j in zip(ia, ib)], out_shape, scale, bound)

    __radd__ = __add__

    def __neg__(self) -> EncryptedTensor:
        n2 = self._pk.nsquare
        return EncryptedTensor(self._pk, [gmpy2.invert(c, n2) for c in self._cts], self._shape, self._scale, self._bound)

    def __sub__(self, other) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            self._same_key(other)
            return self + (-other)
        t = as_plain_tensor(other)
        if t is None:
            return NotImplemented
        return self + (-t if t.dtype != torch.bool else -t.to(torch.int64))

    def __rsub__(self, other) -> EncryptedTensor:
        t = as_plain_tensor(other)
        if t is None:
            return NotImplemented
        return (-self) + t

    # -- multiplication -------------------------------------------------------------------------
    def mul(self, other, *, plain_bits: int = DEFAULT_PLAIN_BITS) -> EncryptedTensor:
        """Elementwise product with a plaintext (broadcasting), quantised to ``plain_bits`` significant bits."""
        if isinstance(other, EncryptedTensor):
            raise NotImplementedError(
                "Paillier is only additively homomorphic: an encrypted tensor cannot be multiplied by "
                "another encrypted tensor (multiply by a plaintext instead)"
            )
        t = as_plain_tensor(other)
        if t is None:
            raise TypeError(f"cannot multiply an EncryptedTensor by a {type(other).__name__}")
        ps = plain_scale(t, plain_bits)
        ks = quantize(t, ps)
        scale = self._checked(self._scale + ps, "the product's scale")
        bound = self._checked(self._bound + max([0] + [_bitlen(k) for k in ks]), "the product")
        out_shape = broadcast_shape(self._shape, t.shape)
        ia, ib = flat_index(self._shape, out_shape), flat_index(t.shape, out_shape)
        pk = self._pk
        if len(set(ks)) == 1:  # scalar: one exponent for every ciphertext
            k = ks[0]
            cts = self._cts if k == 1 else [pk.raw_mul(c, k) for c in self._cts]
            return EncryptedTensor(pk, [cts[i] for i in ia], out_shape, scale, bound)
        return EncryptedTensor(pk, [pk.raw_mul(self._cts[i], ks[j]) for i, j in zip(ia, ib)], out_shape, scale, bound)

    def __mul__(self, other) -> EncryptedTensor:
        if not isinstance(other, EncryptedTensor) and as_plain_tensor(other) is None:
            return NotImplemented
        return self.mul(other)

    __rmul__ = __mul__

    def __truediv__(self, other) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            raise NotImplementedError("Paillier cannot divide by an encrypted value")
        t = as_plain_tensor(other)
        if t is None:
            return NotImplemented
        t = t.to(torch.float64)
        if t.numel() and bool((t == 0).any()):
            raise ZeroDivisionError("division of an EncryptedTensor by zero")
        return self.mul(1.0 / t)

    # -- matrix products ------------------------------------------------------------------------
    def _matmul_plain(self, plain: torch.Tensor, plain_on_left: bool, plain_bits: int) -> EncryptedTensor:
        if self.ndim not in (1, 2) or plain.dim() not in (1, 2):
            raise ValueError(
                f"matmul with an EncryptedTensor supports 1-D and 2-D operands, got "
                f"{tuple(plain.shape) if plain_on_left else tuple(self._shape)} @ "
                f"{tuple(self._shape) if plain_on_left else tuple(plain.shape)}"
            )
        ps = plain_scale(plain, plain_bits)
        ks = quantize(plain, ps)
        plan = plan_matmul(self._cts, self._shape, ks, plain.shape, plain_on_left)
        scale = self._checked(self._scale + ps, "the product's scale")
        bound = self._checked(self._bound + _bitlen(plan.row_sum), "the product")
        exp_bits = _bitlen(max([0] + [abs(k) for k in ks]))
        flat_out = run_matmul(plan, self._pk.nsquare, self._pk.bits, exp_bits)
        return EncryptedTensor(self._pk, flat_out, plan.out_shape, scale, bound)

    def matmul(self, other, *, plain_bits: int = DEFAULT_PLAIN_BITS) -> EncryptedTensor:
        """``self @ other`` for a plaintext ``other`` (1-D or 2-D)."""
        if isinstance(other, EncryptedTensor):
            raise NotImplementedError(
                "Paillier is only additively homomorphic: encrypted @ encrypted would multiply ciphertexts"
            )
        t = as_plain_tensor(other)
        if t is None:
            raise TypeError(f"cannot matmul an EncryptedTensor with a {type(other).__name__}")
        return self._matmul_plain(t, plain_on_left=False, plain_bits=plain_bits)

    def rmatmul(self, other, *, plain_bits: int = DEFAULT_PLAIN_BITS) -> EncryptedTensor:
        """``other @ self`` for a plaintext ``other`` (1-D or 2-D)."""
        t = as_plain_tensor(other)
        if t is None:
            raise TypeError(f"cannot matmul a {type(other).__name__} with an EncryptedTensor")
        return self._matmul_plain(t, plain_on_left=True, plain_bits=plain_bits)

    def __matmul__(self, other) -> EncryptedTensor:
        if not isinstance(other, EncryptedTensor) and as_plain_tensor(other) is None:
            return NotImplemented
        return self.matmul(other)

    def __rmatmul__(self, other) -> EncryptedTensor:
        if as_plain_tensor(other) is None:
            return NotImplemented
        return self.rmatmul(other)

    # -- reductions -----------------------------------------------------------------------------
    def sum(self, dim: int | None = None) -> EncryptedTensor:
        """Sum of all elements (``dim=None``) or along one dimension."""
        n2 = self._pk.nsquare
        if dim is None:
            acc = mpz(1)
            for c in self._cts:
                acc = acc * c % n2
            bound = self._checked(self._bound + _bitlen(max(1, len(self._cts) - 1)), "the sum")
            return EncryptedTensor(self._pk, [acc], torch.Size([]), self._scale, bound)
        g = self._index_grid().movedim(dim, -1)
        length = g.shape[-1]
        groups = g.reshape(-1, length).tolist() if length else [[] for _ in range(numel(g.shape[:-1]))]
        out = []
        for idx in groups:
            acc = mpz(1)
            for i in idx:
                acc = acc * self._cts[i] % n2
            out.append(acc)
        bound = self._checked(self._bound + _bitlen(max(1, length - 1)), "the sum")
        return EncryptedTensor(self._pk, out, g.shape[:-1], self._scale, bound)

    # -- wire -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialise to the torchhefl wire format (header + big-endian ciphertext bytes)."""
        return self._encode({"shape": list(self._shape), "scale": self._scale, "bound_bits": self._bound}, self._cts)

    @classmethod
    def from_bytes(cls, blob: bytes, *, public_key: PublicKey, max_bytes: int = wire.DEFAULT_MAX_MESSAGE_BYTES) -> EncryptedTensor:
        """Parse and check bytes from :meth:`to_bytes`; they must name ``public_key``.

        Raises:
            MalformedMessageError: anything malformed (truncated, corrupted, out-of-range values).
            KeyMismatchError: the message is bound to another key.
        """
        check_public_key(public_key)
        with cls._parsing():
            msg = cls._decode_header(blob, public_key, max_bytes)
            meta = msg.meta
            shape = meta["shape"]
            if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(is_int(d) and d >= 0 for d in shape):
                raise MalformedMessageError(f"invalid shape {shape!r}")
            scale, bound = meta["scale"], meta["bound_bits"]
            for name, v in (("scale", scale), ("bound_bits", bound)):
                if not is_int(v) or not 0 <= v <= public_key.max_bits:
                    raise MalformedMessageError(f"{name} {v!r} is out of range [0, {public_key.max_bits}]")
            cts = cls._read_ciphertexts(msg, public_key, numel(shape))
            return cls(public_key, cts, torch.Size(shape), scale, bound)


# -- argument checks ------------------------------------------------------------------------------
def _check_scale(scale, public_key: PublicKey) -> None:
    if not is_int(scale) or not 0 <= scale <= public_key.max_bits:
        raise ValueError(f"scale must be an int in [0, {public_key.max_bits}], got {scale!r}")


def _check_bound(bound_bits, public_key: PublicKey) -> None:
    if not is_int(bound_bits) or not 0 <= bound_bits <= public_key.max_bits:
        raise OverflowError(f"bound_bits must be an int in [0, {public_key.max_bits}] for this key, got {bound_bits!r}")
