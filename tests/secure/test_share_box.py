import pytest

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.secure.share_box import X25519Pair, agree, open_sealed, seal


def test_two_sites_agree_and_a_sealed_share_opens_only_as_sealed():
    a, b, eve = X25519Pair(), X25519Pair(), X25519Pair()
    k_ab = agree(a.private_bytes(), b.public_bytes(), b"info")
    assert k_ab == agree(b.private_bytes(), a.public_bytes(), b"info")
    assert k_ab != agree(b.private_bytes(), a.public_bytes(), b"other info")
    box = seal(k_ab, b"share", b"from a to b")
    assert open_sealed(k_ab, box, b"from a to b") == b"share"
    with pytest.raises(ProtocolError, match="does not open"):
        open_sealed(k_ab, box, b"from a to c")  # redirected
    with pytest.raises(ProtocolError, match="does not open"):
        open_sealed(agree(eve.private_bytes(), a.public_bytes(), b"info"), box, b"from a to b")
    with pytest.raises(ProtocolError, match="does not open"):
        open_sealed(k_ab, box[:-1] + bytes([box[-1] ^ 1]), b"from a to b")
    with pytest.raises(MalformedMessageError, match="shorter than its nonce and tag"):
        open_sealed(k_ab, b"x", b"")
    with pytest.raises(MalformedMessageError, match="32 bytes"):
        agree(a.private_bytes(), b"\0" * 5, b"info")
    assert X25519Pair(a.private_bytes()).public_bytes() == a.public_bytes()
