"""from_bytes of EncryptedTensor and SecureStateDict on malformed input: only MalformedMessageError
or KeyMismatchError, each with its reason."""

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchhefl.exceptions import KeyMismatchError, MalformedMessageError
from torchhefl.secure import EncryptedTensor, PackedSum, SecureStateDict
from torchhefl.secure import wire


@pytest.fixture(scope="module")
def blobs(keypair):
    pk, _ = keypair
    et = EncryptedTensor.encrypt(torch.tensor([[1.5, -2.0], [0.0, 3.0]]), pk)
    sd = SecureStateDict.encrypt({"w": torch.randn(10), "n": torch.tensor(3)}, pk)
    return {"tensor": (EncryptedTensor, et.to_bytes()), "state": (SecureStateDict, sd.to_bytes())}


def rewrite(blob, fn_meta=None, fn_arrays=None):
    msg = wire.decode(blob)
    meta, arrays = dict(msg.meta), {k: v.copy() for k, v in msg.arrays.items()}
    if fn_meta:
        fn_meta(meta)
    if fn_arrays:
        fn_arrays(arrays)
    return wire.encode(msg.kind, meta, arrays)


KINDS = ["tensor", "state"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(keypair, blobs, kind):
    pk, sk = keypair
    cls, blob = blobs[kind]
    assert cls.from_bytes(blob, public_key=pk).to_bytes() == blob


@pytest.mark.parametrize("kind", KINDS)
def test_truncated(keypair, blobs, kind):
    cls, blob = blobs[kind]
    for cut in (0, 5, 20, len(blob) // 2, len(blob) - 1):
        with pytest.raises(MalformedMessageError, match="truncated|shorter"):
            cls.from_bytes(blob[:cut], public_key=keypair[0])


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_version(keypair, blobs, kind):
    cls, blob = blobs[kind]
    bad = blob[:8] + struct.pack("<H", 99) + blob[10:]
    with pytest.raises(MalformedMessageError, match="unsupported wire format version 99"):
        cls.from_bytes(bad, public_key=keypair[0])
    bad = rewrite(blob, lambda m: m.update(format=99))
    with pytest.raises(MalformedMessageError, match="unsupported .* format 99"):
        cls.from_bytes(bad, public_key=keypair[0])


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_key(keypair, other_keypair, blobs, kind):
    cls, blob = blobs[kind]
    with pytest.raises(KeyMismatchError, match="expected key"):
        cls.from_bytes(blob, public_key=other_keypair[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value, message", [(0, "out of range"), ("n2", "out of range")])
def test_ciphertext_out_of_range(keypair, blobs, kind, value, message):
    pk, _ = keypair
    cls, blob = blobs[kind]
    v = int(pk.nsquare) if value == "n2" else value
    width = pk.ciphertext_bytes

    def patch(arrays):
        a = arrays["ciphertexts"]
        if v < 256**width:
            a[0] = list(v.to_bytes(width, "big"))
        else:
            a[0] = 255

    with pytest.raises(MalformedMessageError, match=message):
        cls.from_bytes(rewrite(blob, fn_arrays=patch), public_key=pk)


def _non_units(pk, sk):
    """Ciphertexts in range (p < q: PrivateKey sorts them) that are not units modulo n^2, each named."""
    p, q = int(sk._p), int(sk._q)
    n = int(pk.n)
    return {"n": n, "p": p, "3q": 3 * q, "p^3 q": p**3 * q, "n^2 - n": n * n - n}


@pytest.mark.parametrize("reader", ["tensor", "state", "packed"])
@pytest.mark.parametrize("which", ["n", "p", "3q", "p^3 q", "n^2 - n", "0", "n^2"])
def test_every_ciphertext_reader_refuses_non_units_and_the_range(keypair, reader, which):
    # gcd(c, n) != 1 (c = n, a multiple of p or q) encrypts nothing; 0 and n^2 lie outside 0 < c < n^2
    pk, sk = keypair
    cls, blob = {
        "tensor": (EncryptedTensor, EncryptedTensor.encrypt(torch.tensor([1.5, -2.0, 0.25]), pk).to_bytes()),
        "state": (SecureStateDict, SecureStateDict.encrypt({"w": torch.randn(40)}, pk).to_bytes()),
        "packed": (PackedSum, PackedSum.encrypt([1.0, -2.0] * 10, pk).to_bytes()),
    }[reader]
    values = {**_non_units(pk, sk), "0": 0, "n^2": int(pk.nsquare)}
    width = pk.ciphertext_bytes
    count = wire.decode(blob).arrays["ciphertexts"].shape[0]
    assert count >= 2 and cls.from_bytes(blob, public_key=pk).to_bytes() == blob  # the valid message is accepted

    def patch(arrays):
        v = values[which]
        arrays["ciphertexts"][count - 1] = list(v.to_bytes(width, "big")) if v < 256**width else 255

    problem = "is out of range" if which in ("0", "n^2") else r"is not a unit \(it shares a factor with n\)"
    message = f"ciphertext {count - 1} {problem}"
    with pytest.raises(MalformedMessageError, match=message):
        cls.from_bytes(rewrite(blob, fn_arrays=patch), public_key=pk)


def test_units_are_accepted_whatever_their_form(keypair):
    # 1 (0 without randomness), 1 + m n (a public value), n^2 - 1 (a unit: it decrypts to 0) and a
    # randomised encryption
    pk, sk = keypair
    blob = EncryptedTensor.encrypt(torch.zeros(4), pk).to_bytes()
    n, n2 = int(pk.n), int(pk.nsquare)
    units = [1, 1 + 5 * n, n2 - 1, int(pk.encrypt_int(-3))]
    width = pk.ciphertext_bytes

    def patch(arrays):
        for i, v in enumerate(units):
            arrays["ciphertexts"][i] = list(v.to_bytes(width, "big"))

    back = EncryptedTensor.from_bytes(rewrite(blob, fn_arrays=patch), public_key=pk)
    assert [int(c) for c in back.ciphertexts] == units
    assert [sk.decrypt_raw(c) for c in back.ciphertexts] == [0, 5, 0, n - 3]


@pytest.mark.parametrize(
    "kind, mutate, message",
    [
        ("tensor", lambda m: m.update(shape=[3, 3]), "expected uint8 \\(9,"),
        ("tensor", lambda m: m.update(shape="x"), "invalid shape"),
        ("tensor", lambda m: m.update(scale=-1), "scale -1 is out of range"),
        ("tensor", lambda m: m.update(bound_bits=10**6), "bound_bits .* out of range"),
        ("tensor", lambda m: m.pop("scale"), "header fields"),
        ("tensor", lambda m: m.update(key_bits="512"), "wrong type"),
        ("state", lambda m: m.update(weight_bound=0), "weight_bound 0 is out of range"),
        ("state", lambda m: m.update(weight_bound=True), "weight_bound True"),
        ("state", lambda m: m["encoding"].update(slots=100), "unsupported encoding"),
        ("state", lambda m: m["encoding"].update(weight_bits=10, slot_bits=48, slots=10), "unsupported encoding"),
        ("state", lambda m: m["encoding"].update(extra=1), "unsupported encoding"),
        ("state", lambda m: m["entries"][0].update(dtype="object"), "unsupported dtype"),
        ("state", lambda m: m["entries"].append(m["entries"][0]), "appears twice"),
        ("state", lambda m: m["entries"][0].update(shape=[1000]), "expected uint8"),
        ("state", lambda m: m.update(entries={}), "must be a list"),
    ],
)
def test_inconsistent_headers(keypair, blobs, kind, mutate, message):
    cls, blob = blobs[kind]
    with pytest.raises(MalformedMessageError, match=message):
        cls.from_bytes(rewrite(blob, mutate), public_key=keypair[0])


def test_wrong_kind_and_not_bytes(keypair, blobs):
    with pytest.raises(MalformedMessageError, match="expected a 'torchhefl.SecureStateDict' message"):
        SecureStateDict.from_bytes(blobs["tensor"][1], public_key=keypair[0])
    with pytest.raises(MalformedMessageError, match="must be bytes"):
        EncryptedTensor.from_bytes("text", public_key=keypair[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), pos=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255))
def test_corrupted_bytes_raise_only_domain_errors(keypair, blobs, kind, pos, byte):
    cls, blob = blobs[kind]
    i = int(pos * len(blob))
    bad = blob[:i] + bytes([byte]) + blob[i + 1 :]
    try:
        cls.from_bytes(bad, public_key=keypair[0])
    except (MalformedMessageError, KeyMismatchError):
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.sampled_from(["format", "fingerprint", "key_bits", "shape", "scale", "bound_bits",
                                             "encoding", "weight_bound", "entries"]),
                            st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=4),
                                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                                         max_leaves=6)))
def test_arbitrary_headers_raise_only_domain_errors(keypair, blobs, meta):
    for kind in KINDS:
        cls, blob = blobs[kind]
        try:
            cls.from_bytes(rewrite(blob, lambda m: m.update(meta)), public_key=keypair[0])
        except (MalformedMessageError, KeyMismatchError):
            pass
