"""The fixed-point parameter sets: today's widths, used by the containers, frozen."""

import dataclasses

import pytest
import torch

from torchhefl.secure import (
    PACKED_SUM_FIXED_POINT,
    STATE_DICT_FIXED_POINT,
    TENSOR_FIXED_POINT,
    EncryptedTensor,
    FixedPoint,
    PackedSum,
    SecureStateDict,
    wire,
)
from torchhefl.secure.packed_sum import MAX_TERMS


def test_parameter_sets_have_the_wire_widths():
    assert (STATE_DICT_FIXED_POINT.mag_bits, STATE_DICT_FIXED_POINT.slot_bits) == (37, 62)
    assert STATE_DICT_FIXED_POINT.max_total_weight == 2**24 - 1 and STATE_DICT_FIXED_POINT.max_abs_value == 8192.0
    assert (PACKED_SUM_FIXED_POINT.mag_bits, PACKED_SUM_FIXED_POINT.slot_bits) == (148, 160)
    assert MAX_TERMS <= PACKED_SUM_FIXED_POINT.max_total_weight
    assert (TENSOR_FIXED_POINT.scale_bits, TENSOR_FIXED_POINT.value_bits, TENSOR_FIXED_POINT.plain_bits) == (32, 16, 24)


def test_containers_use_their_parameters(keypair):
    pk, _ = keypair
    assert SecureStateDict.FIXED_POINT is STATE_DICT_FIXED_POINT and PackedSum.FIXED_POINT is PACKED_SUM_FIXED_POINT
    enc = SecureStateDict.encrypt({"w": torch.zeros(3)}, pk)
    header = wire.decode(enc.to_bytes()).meta["encoding"]
    fp = STATE_DICT_FIXED_POINT
    assert (header["scale"], header["mag_bits"], header["weight_bits"], header["slot_bits"]) == (
        fp.scale_bits, fp.mag_bits, fp.headroom_bits, fp.slot_bits
    )
    t = EncryptedTensor.encrypt(torch.tensor([0.5]), pk)
    assert EncryptedTensor.FIXED_POINT is TENSOR_FIXED_POINT
    assert (t.scale, t.bound_bits) == (TENSOR_FIXED_POINT.scale_bits, TENSOR_FIXED_POINT.mag_bits)


def test_parameters_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        STATE_DICT_FIXED_POINT.scale_bits = 30
    assert FixedPoint(scale_bits=8, value_bits=4, headroom_bits=2).slot_bits == 15
