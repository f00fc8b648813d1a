"""Blinded re-encryption (the paper's section 4.3.3): lower a ciphertext's scale through the key holder.

Every plaintext product deepens an :class:`~torchhefl.secure.EncryptedTensor`'s fixed-point scale;
only the key holder can bring it back down. The client adds a fresh encrypted mask ``R``, uniform
over ``[0, 2^w)`` with ``w = scale + value_bits + mask_bits``: ``mask_bits`` (at least
:data:`MIN_MASK_BITS`, 128) more bits than the public bound ``|m| < 2^(scale + value_bits)`` on the
value. It sends the masked tensor; the server decrypts ``V = m + R``, rounds ``V / 2^k`` to the
target scale and re-encrypts it; the client subtracts ``round(R / 2^k)``. The result is off by at
most one unit in the last place of the target scale.

What the server learns. For one value, ``m + R`` and ``R`` alone (which does not depend on ``m``)
are within statistical distance ``|m| / 2^w < 2^-mask_bits``. The masks are independent, so over a
whole run the server's view of every value it decrypts in refreshes is within ``N * 2^-mask_bits``
of a view that does not depend on the weights, where ``N`` counts the masked values (parameters x
refreshes, over every site and round). With 128 bits that stays below ``2^-88`` for any run under
``2^40`` masked values; the default run masks 31 x 90 = 2,790, for which the 40 bits used before
allowed ``2,790 * 2^-40``, about ``2^-28.5``. The price is ``mask_bits`` of the plaintext room a
refresh needs (see :meth:`RefreshClient.masked_bits`): on a 2048-bit key, with HEM's 16 value bits,
a tensor may reach scale ``2040 - 16 - 129 = 1895`` and still be refreshed (1983 with 40 bits).

All sizes on the wire are public: the scale, and a bound derived from the scale and the public
``value_bits`` (never the data-dependent bound a product leaves behind).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import wire
from torchhefl.secure.keys import PrivateKey, PublicKey
from torchhefl.secure.tensor import EncryptedTensor

__all__ = ["MIN_MASK_BITS", "REFRESH_REPLY", "REFRESH_REQUEST", "RefreshClient", "serve_refresh"]

MIN_MASK_BITS = 128
"""Statistical hiding of a refreshed value: the mask spans at least this many bits beyond it, so
what the key holder decrypts is within statistical distance ``2^-128`` per value of a mask alone."""

REFRESH_REQUEST = "refresh_ins"
"""Wire kind of a blinded refresh request: meta ``{"target_scale": int}``, the blinded tensor as payload."""

REFRESH_REPLY = "refresh_res"
"""Wire kind of the key holder's reply: the re-encrypted tensor as payload."""


def _envelope(kind: str, meta: dict, tensor: EncryptedTensor) -> bytes:
    """A request or reply: ``kind``, ``meta`` and the tensor's wire bytes as one opaque ``payload``
    array (the shape every protocol message of torchhefl has)."""
    return wire.encode(kind, meta, {"payload": np.frombuffer(tensor.to_bytes(), dtype=np.uint8)})


def _open(blob: bytes, kind: str, public_key: PublicKey) -> tuple[dict, EncryptedTensor]:
    """``(meta, tensor)`` of an :func:`_envelope` of ``kind``; :class:`MalformedMessageError` otherwise."""
    msg = wire.decode(blob)
    if msg.kind != kind:
        raise MalformedMessageError(f"expected a {kind!r} message, got {msg.kind!r}")
    if set(msg.arrays) - {"payload"}:
        raise MalformedMessageError(f"{msg.kind} message carries unexpected arrays {sorted(set(msg.arrays) - {'payload'})}")
    if "payload" not in msg.arrays:
        raise MalformedMessageError(f"{msg.kind} message has no payload")
    arr = msg.arrays["payload"]
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise MalformedMessageError(f"{msg.kind} message payload must be a flat byte array")
    return msg.meta, EncryptedTensor.from_bytes(arr.tobytes(), public_key=public_key)


def _round_shift(v: int, k: int) -> int:
    """``round(v / 2^k)`` (ties up) for an integer ``v``."""
    return v if k == 0 else (v + (1 << (k - 1))) >> k


class RefreshClient:
    """The client side: blinds a tensor, sends it through ``channel`` and unblinds the reply.

    Args:
        channel: sends request bytes to the key holder and returns its reply bytes (``None`` when
            requests and replies travel as separate messages: see :meth:`begin`, :meth:`finish`).
        public_key: the key holder's public key.
        value_bits: public bound on the values: ``|v| < 2^value_bits``.
        mask_bits: mask width beyond the value's bound. Default: :data:`MIN_MASK_BITS`.

    Attributes:
        count: refreshes done so far.
    """

    def __init__(
        self,
        channel: Callable[[bytes], bytes] | None,
        public_key: PublicKey,
        *,
        value_bits: int,
        mask_bits: int = MIN_MASK_BITS,
    ) -> None:
        if mask_bits < MIN_MASK_BITS:
            raise ValueError(f"mask_bits must be at least {MIN_MASK_BITS} for statistical hiding, got {mask_bits}")
        self.channel, self.public_key = channel, public_key
        self.value_bits, self.mask_bits = int(value_bits), int(mask_bits)
        self.count = 0

    def masked_bits(self, scale: int) -> int:
        """The public bound (bits) of a blinded tensor at ``scale``."""
        return scale + self.value_bits + self.mask_bits + 1

    def can_refresh(self, scale: int) -> bool:
        """Whether a tensor at ``scale`` still has room for the blinding mask."""
        return self.masked_bits(scale) <= self.public_key.max_bits

    def __call__(self, tensor: EncryptedTensor, target_scale: int) -> EncryptedTensor:
        """``tensor`` re-encrypted at ``target_scale`` (<= its scale) by the key holder, blinded.

        Sends the request through ``channel``; a client whose replies arrive as separate messages
        uses :meth:`begin` and :meth:`finish` instead.
        """
        if self.channel is None:
            raise ValueError("this RefreshClient has no channel: use begin() and finish()")
        request, masks = self.begin(tensor, target_scale)
        return self.finish(self.channel(request), masks, tensor.shape, tensor.scale, target_scale)

    def begin(self, tensor: EncryptedTensor, target_scale: int) -> tuple[bytes, list[int]]:
        """Blind ``tensor`` for a refresh to ``target_scale``: ``(request bytes, the secret masks)``.

        The masks stay with the caller (they unblind the reply in :meth:`finish`); the request
        bytes go to the key holder.
        """
        pk = self.public_key
        scale = tensor.scale
        if not 0 <= target_scale <= scale:
            raise ValueError(f"target scale {target_scale} must lie in [0, {scale}]")
        if tensor.public_key != pk:
            raise ValueError("the tensor is not under the key holder's public key")
        bound = self.masked_bits(scale)
        if bound > pk.max_bits:
            raise OverflowError(
                f"a tensor at scale {scale} has no room left for a {self.mask_bits}-bit blinding mask "
                f"({bound} > {pk.max_bits} bits): refresh earlier"
            )
        mask_width = scale + self.value_bits + self.mask_bits
        masks = [secrets.randbits(mask_width) for _ in range(tensor.numel())]
        enc_masks = pk.encrypt_ints(masks)  # fresh randomness: the sum is a fresh-looking ciphertext
        n2 = pk.nsquare
        blinded = EncryptedTensor.from_ciphertexts(
            pk, [c * r % n2 for c, r in zip(tensor.ciphertexts, enc_masks)], tensor.shape, scale=scale, bound_bits=bound
        )
        return _envelope(REFRESH_REQUEST, {"target_scale": int(target_scale)}, blinded), masks

    def finish(self, reply: bytes, masks: list[int], shape, scale: int, target_scale: int) -> EncryptedTensor:
        """Unblind the key holder's ``reply`` to a :meth:`begin` request of a tensor of ``shape`` at
        ``scale``: the tensor at ``target_scale``. Raises :class:`MalformedMessageError` for a reply
        that is not a refresh of that shape and scale."""
        pk = self.public_key
        _, out = _open(reply, REFRESH_REPLY, pk)
        if tuple(out.shape) != tuple(shape) or out.scale != target_scale or len(masks) != out.numel():
            raise MalformedMessageError(
                f"refresh reply of shape {tuple(out.shape)} at scale {out.scale}, expected "
                f"{tuple(shape)} at scale {target_scale}"
            )
        k = scale - target_scale
        cts = [pk.raw_add_plain(c, -_round_shift(r, k)) for c, r in zip(out.ciphertexts, masks)]
        self.count += 1
        return EncryptedTensor.from_ciphertexts(
            pk, cts, tuple(shape), scale=target_scale, bound_bits=target_scale + self.value_bits
        )


def serve_refresh(request: bytes, private_key: PrivateKey) -> tuple[bytes, list[int]]:
    """The key holder's side: decrypt a blinded tensor, rescale it, re-encrypt it.

    Returns ``(reply bytes, the decrypted blinded integers)``; the integers are returned so the
    caller can account for what it saw (they are masked, and mean nothing without the mask).

    Raises:
        MalformedMessageError: a malformed request, or a target scale above the tensor's.
    """
    pk = private_key.public_key
    meta, blinded = _open(request, REFRESH_REQUEST, pk)
    target = meta.get("target_scale")
    if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target <= blinded.scale:
        raise MalformedMessageError(f"refresh target scale {target!r} must be an int in [0, {blinded.scale}]")
    try:
        seen = blinded.decrypt_ints(private_key)
    except OverflowError as e:
        raise MalformedMessageError(f"refresh request holds a value beyond its declared bound: {e}") from None
    k = blinded.scale - target
    bound = max(1, blinded.bound_bits - k + 1)
    fresh = EncryptedTensor.encrypt_ints(
        [_round_shift(v, k) for v in seen], blinded.shape, pk, scale=target, bound_bits=bound
    )
    return _envelope(REFRESH_REPLY, {}, fresh), seen
