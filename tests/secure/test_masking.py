"""Pairwise masks: they cancel over a round's participants, and only there."""

import pytest

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.secure.masking import PairwiseMasker, mask_label, prg_ints

MODULUS = (1 << 521) - 1


def _agreed(names):
    maskers = {c: PairwiseMasker(c) for c in names}
    keys = {c: m.public_bytes() for c, m in maskers.items()}
    for m in maskers.values():
        m.agree(keys)
    return maskers


@pytest.mark.parametrize("participants", [["a", "b"], ["a", "b", "c"], ["b", "d", "c", "a"], ["a", "c", "d"]])
def test_masks_of_the_participants_sum_to_zero(participants):
    maskers = _agreed(["a", "b", "c", "d"])
    label = mask_label("update", participants, round=3, attempt=1)
    masks = [maskers[c].mask(label, participants, 5, MODULUS) for c in participants]
    assert all(any(x != 0 for x in m) for m in masks)
    assert [sum(col) % MODULUS for col in zip(*masks)] == [0] * 5


def test_masks_of_a_subset_do_not_cancel():
    maskers = _agreed(["a", "b", "c"])
    everyone = ["a", "b", "c"]
    label = mask_label("update", everyone, round=1, attempt=1)
    masks = [maskers[c].mask(label, everyone, 4, MODULUS) for c in ("a", "b")]
    assert all(s % MODULUS != 0 for s in map(sum, zip(*masks)))


def test_masks_change_with_round_attempt_and_participants():
    maskers = _agreed(["a", "b", "c"])
    m = maskers["a"]
    base = m.mask(mask_label("update", ["a", "b", "c"], round=1, attempt=1), ["a", "b", "c"], 3, MODULUS)
    for label, parts in [
        (mask_label("update", ["a", "b", "c"], round=2, attempt=1), ["a", "b", "c"]),
        (mask_label("update", ["a", "b", "c"], round=1, attempt=2), ["a", "b", "c"]),
        (mask_label("update", ["a", "b"], round=1, attempt=2), ["a", "b"]),
        (mask_label("stats", ["a", "b", "c"]), ["a", "b", "c"]),
    ]:
        other = m.mask(label, parts, 3, MODULUS)
        assert all(x != y for x, y in zip(base, other))


def test_label_is_canonical():
    assert mask_label("update", ["b", "a"], round=1, attempt=2) == mask_label("update", ["a", "b"], attempt=2, round=1)


def test_prg_is_deterministic_and_in_range():
    a = prg_ints(b"s" * 32, b"label", 50, 1000003)
    assert a == prg_ints(b"s" * 32, b"label", 50, 1000003)
    assert a != prg_ints(b"t" * 32, b"label", 50, 1000003)
    assert all(0 <= x < 1000003 for x in a) and len(set(a)) > 45


def test_pair_seeds_agree_and_are_private_to_the_pair():
    maskers = _agreed(["a", "b", "c"])
    label = mask_label("x", ["a", "b"])
    ab = maskers["a"].mask(label, ["a", "b"], 2, MODULUS)
    ba = maskers["b"].mask(label, ["a", "b"], 2, MODULUS)
    assert [(x + y) % MODULUS for x, y in zip(ab, ba)] == [0, 0]
    # an outsider with its own key cannot reproduce the pair's mask
    eve = PairwiseMasker("a")
    eve.agree({"a": eve.public_bytes(), "b": maskers["b"].public_bytes()})
    assert eve.mask(label, ["a", "b"], 2, MODULUS) != ab


def test_agree_rejects_a_list_without_our_own_key():
    maskers = _agreed(["a", "b"])
    other = PairwiseMasker("a")
    with pytest.raises(ProtocolError, match="does not hold client a's own public key"):
        maskers["a"].agree({"a": other.public_bytes(), "b": maskers["b"].public_bytes()})


def test_agree_rejects_malformed_keys():
    m = PairwiseMasker("a")
    with pytest.raises(MalformedMessageError, match="public key of 'b' is not 32 bytes"):
        m.agree({"a": m.public_bytes(), "b": b"short"})


def test_mask_rejects_unknown_or_absent_participants():
    maskers = _agreed(["a", "b"])
    with pytest.raises(ProtocolError, match="not among the upload's participants"):
        maskers["a"].mask(b"l", ["b"], 1, MODULUS)
    with pytest.raises(ProtocolError, match="shares no mask seed with z"):
        maskers["a"].mask(b"l", ["a", "b", "z"], 1, MODULUS)
    with pytest.raises(ProtocolError, match="names a client twice"):
        maskers["a"].mask(b"l", ["a", "b", "b"], 1, MODULUS)


def test_a_masker_rebuilt_from_its_private_key_makes_the_same_masks():
    maskers = _agreed(["a", "b", "c"])
    again = PairwiseMasker("a", maskers["a"].private_bytes())
    assert again.public_bytes() == maskers["a"].public_bytes()
    again.agree({c: m.public_bytes() for c, m in maskers.items()})
    label = mask_label("update", ["a", "b", "c"], round=1, attempt=1)
    assert again.mask(label, ["a", "b", "c"], 3, MODULUS) == maskers["a"].mask(label, ["a", "b", "c"], 3, MODULUS)
    assert PairwiseMasker("a").public_bytes() != maskers["a"].public_bytes()
    with pytest.raises(ValueError, match="32 bytes"):
        PairwiseMasker("a", b"short")
