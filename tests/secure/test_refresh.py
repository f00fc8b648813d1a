"""Blinded re-encryption: correct values at the lower scale, and the key holder learns nothing."""

import warnings

import numpy as np
import pytest
import torch

from torchhefl.exceptions import MalformedMessageError
from torchhefl.federated.messages import decode_request, encode_request, payload_of
from torchhefl.secure import EncryptedTensor, InsecureKeyWarning, generate_keypair, wire
from torchhefl.secure.refresh import MIN_MASK_BITS, RefreshClient, serve_refresh

VALUE_BITS = 16


@pytest.fixture(scope="module")
def keypair():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        return generate_keypair(512, allow_insecure=True)


class _KeyHolder:
    """The server's endpoint, recording what it decrypted."""

    def __init__(self, private_key):
        self.private_key = private_key
        self.seen: list[list[int]] = []

    def __call__(self, request: bytes) -> bytes:
        reply, seen = serve_refresh(request, self.private_key)
        self.seen.append(seen)
        return reply


def _deep(values, pk, scale):
    """``values`` encrypted at a deep ``scale`` with the public bound, as after some steps."""
    t = torch.as_tensor(values, dtype=torch.float64)
    enc = EncryptedTensor.encrypt(t, pk, scale=scale)
    return EncryptedTensor.from_ciphertexts(pk, enc.ciphertexts, enc.shape, scale=scale, bound_bits=scale + VALUE_BITS)


def test_refresh_keeps_the_values_at_the_target_scale(keypair):
    pk, sk = keypair
    holder = _KeyHolder(sk)
    client = RefreshClient(holder, pk, value_bits=VALUE_BITS)
    values = torch.tensor([0.0, 1.5, -2.25, 1234.5678, -0.000123, 65535.0])
    enc = _deep(values, pk, 300)
    out = client(enc, 32)
    assert out.scale == 32 and out.bound_bits == 32 + VALUE_BITS and out.shape == enc.shape
    torch.testing.assert_close(out.decrypt(sk), enc.decrypt(sk), rtol=0, atol=2.0**-31)
    assert client.count == 1 and len(holder.seen) == 1


def test_refresh_to_the_same_scale_is_exact(keypair):
    pk, sk = keypair
    client = RefreshClient(_KeyHolder(sk), pk, value_bits=VALUE_BITS)
    enc = _deep([3.0, -7.125], pk, 40)
    assert client(enc, 40).decrypt_ints(sk) == enc.decrypt_ints(sk)


def test_what_the_key_holder_decrypts_is_masked(keypair):
    pk, sk = keypair
    holder = _KeyHolder(sk)
    client = RefreshClient(holder, pk, value_bits=VALUE_BITS)
    scale = 200
    mask_bits = scale + VALUE_BITS + MIN_MASK_BITS
    for value in (0.0, 65535.0):  # the smallest and largest magnitudes the public bound allows
        client(_deep([value] * 64, pk, scale), 32)
        client(_deep([value] * 64, pk, scale), 32)
    zero_a, zero_b, big_a, big_b = holder.seen
    # the same weights refreshed twice show the key holder unrelated numbers
    assert all(a != b for a, b in zip(zero_a, zero_b)) and all(a != b for a, b in zip(big_a, big_b))
    # each decrypted number spans the mask's width, far beyond the value's 2^(scale+16) (a value
    # shorter than this comes up with probability 2^-40 per number under a 128-bit mask; never
    # under the 40-bit one)
    for seen in holder.seen:
        assert all(v.bit_length() > scale + VALUE_BITS + 88 for v in seen)
        # its top byte is spread as a uniform byte would be, whatever the value
        top = [v >> (mask_bits - 8) for v in seen]
        assert all(0 <= t < 256 for t in top)
        assert 80 < sum(top) / len(top) < 175 and max(top) - min(top) > 150


def test_refresh_refuses_without_room_for_the_mask(keypair):
    pk, sk = keypair
    client = RefreshClient(_KeyHolder(sk), pk, value_bits=VALUE_BITS)
    scale = pk.max_bits - VALUE_BITS - MIN_MASK_BITS  # one bit short
    assert client.can_refresh(scale - 1) and not client.can_refresh(scale)
    with pytest.raises(OverflowError, match="no room left for a 128-bit blinding mask"):
        client(_deep([1.0], pk, scale), 32)


def test_the_mask_is_128_bits_wider_than_the_value_by_default(keypair):
    # statistical distance 2^-128 per masked value (the module docstring's bound)
    pk, sk = keypair
    assert MIN_MASK_BITS == 128
    client = RefreshClient(_KeyHolder(sk), pk, value_bits=VALUE_BITS)
    assert client.mask_bits == 128 and client.masked_bits(100) == 100 + VALUE_BITS + 128 + 1
    assert RefreshClient(_KeyHolder(sk), pk, value_bits=VALUE_BITS, mask_bits=160).masked_bits(100) == 100 + VALUE_BITS + 161


def test_refresh_arguments_are_checked(keypair):
    pk, sk = keypair
    for narrow in (20, 40, 127):
        with pytest.raises(ValueError, match="mask_bits must be at least 128"):
            RefreshClient(_KeyHolder(sk), pk, value_bits=VALUE_BITS, mask_bits=narrow)
    client = RefreshClient(_KeyHolder(sk), pk, value_bits=VALUE_BITS)
    with pytest.raises(ValueError, match=r"target scale 50 must lie in \[0, 40\]"):
        client(_deep([1.0], pk, 40), 50)


def test_reply_at_the_wrong_scale_is_rejected(keypair):
    pk, sk = keypair

    def lying(request: bytes) -> bytes:
        msg = decode_request(request)
        wrong = encode_request(msg.kind, {"target_scale": msg.meta["target_scale"] + 1}, payload_of(msg))
        return serve_refresh(wrong, sk)[0]

    client = RefreshClient(lying, pk, value_bits=VALUE_BITS)
    with pytest.raises(MalformedMessageError, match="refresh reply of shape"):
        client(_deep([1.0, 2.0], pk, 100), 32)


def test_server_rejects_a_target_above_the_scale(keypair):
    pk, sk = keypair
    enc = _deep([1.0], pk, 40)
    with pytest.raises(MalformedMessageError, match="refresh target scale 41"):
        serve_refresh(encode_request("refresh_ins", {"target_scale": 41}, enc.to_bytes()), sk)
    with pytest.raises(MalformedMessageError, match="expected a 'refresh_ins' message"):
        serve_refresh(encode_request("fit_ins", {"target_scale": 32}, enc.to_bytes()), sk)


def test_a_2048_bit_key_leaves_room_for_93_steps_between_refreshes():
    # the room the 128-bit mask costs, with HEM's public parameters (base scale 32, 20-bit steps,
    # 16 value bits): a tensor may reach scale 2040 - 16 - 129 = 1895 and still be refreshed, so a
    # site takes 93 steps between refreshes (97 with the 40-bit mask used before)
    pk, _ = generate_keypair(2048)
    client = RefreshClient(None, pk, value_bits=VALUE_BITS)
    assert client.can_refresh(1895) and not client.can_refresh(1896)
    scale, steps = 32, 0
    while client.can_refresh(scale + 20):
        scale, steps = scale + 20, steps + 1
    assert steps == 93


def test_request_and_reply_are_protocol_messages_byte_for_byte(keypair):
    # secure/ builds its envelopes with the wire format alone: the bytes are those the protocol's
    # encode_request writes for the same kind, meta and payload (what the code produced before the
    # move out of federated/), and the key holder's reply reads back through decode_request
    pk, sk = keypair
    enc = _deep([1.0, -2.5, 3.25], pk, 100)
    request, masks = RefreshClient(None, pk, value_bits=VALUE_BITS).begin(enc, 32)
    msg = decode_request(request, kind="refresh_ins")
    assert msg.meta == {"target_scale": 32}
    assert request == encode_request("refresh_ins", {"target_scale": 32}, payload_of(msg))
    reply, _ = serve_refresh(request, sk)
    back = decode_request(reply, kind="refresh_res")
    assert back.meta == {} and reply == encode_request("refresh_res", {}, payload_of(back))
    out = RefreshClient(None, pk, value_bits=VALUE_BITS).finish(reply, masks, enc.shape, enc.scale, 32)
    torch.testing.assert_close(out.decrypt(sk), enc.decrypt(sk), rtol=0, atol=2.0**-31)


def test_malformed_envelopes_are_refused_by_their_reason(keypair):
    pk, sk = keypair
    enc = _deep([1.0], pk, 40)
    extra = wire.encode("refresh_ins", {"target_scale": 32}, {"payload": np.frombuffer(enc.to_bytes(), np.uint8), "x": np.zeros(1)})
    with pytest.raises(MalformedMessageError, match=r"refresh_ins message carries unexpected arrays \['x'\]"):
        serve_refresh(extra, sk)
    with pytest.raises(MalformedMessageError, match="refresh_ins message has no payload"):
        serve_refresh(encode_request("refresh_ins", {"target_scale": 32}), sk)
    wide = wire.encode("refresh_ins", {"target_scale": 32}, {"payload": np.zeros(4, dtype=np.int64)})
    with pytest.raises(MalformedMessageError, match="payload must be a flat byte array"):
        serve_refresh(wide, sk)
    client = RefreshClient(None, pk, value_bits=VALUE_BITS)
    request, masks = client.begin(enc, 32)
    with pytest.raises(MalformedMessageError, match="expected a 'refresh_res' message, got 'refresh_ins'"):
        client.finish(request, masks, enc.shape, enc.scale, 32)
