import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchhefl.exceptions import KeyMismatchError
from torchhefl.nn.functional import taylor_grad
from torchhefl.secure import EncryptedTensor

HYP = settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
values = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False, width=64).map(lambda v: round(v, 4))
shapes = st.sampled_from([(), (1,), (3,), (2, 3), (4, 1)])


def tensors(shape):
    n = 1
    for d in shape:
        n *= d
    return st.lists(values, min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=torch.float64).reshape(shape))


def close(enc, sk, ref, tol):
    out = enc.decrypt(sk)
    assert out.dtype == torch.float64 and out.shape == ref.shape
    torch.testing.assert_close(out, ref.to(torch.float64), atol=tol, rtol=0)


@HYP
@given(data=st.data(), shape=shapes)
def test_encrypt_decrypt_roundtrip(keypair, data, shape):
    pk, sk = keypair
    x = data.draw(tensors(shape))
    close(EncryptedTensor.encrypt(x, pk), sk, x, 2**-32)


@HYP
@given(data=st.data(), shape=shapes, op=st.sampled_from(["add", "radd", "sub", "rsub", "neg", "add_enc", "sub_enc"]))
def test_additive_ops_match_plaintext(keypair, data, shape, op):
    pk, sk = keypair
    a = data.draw(tensors(shape))
    b = data.draw(tensors(data.draw(st.sampled_from([shape, (), shape[-1:]]))))
    ea, eb = EncryptedTensor.encrypt(a, pk), EncryptedTensor.encrypt(b, pk)
    enc, ref = {
        "add": (lambda: (ea + b, a + b)),
        "radd": (lambda: (b + ea, b + a)),
        "sub": (lambda: (ea - b, a - b)),
        "rsub": (lambda: (b - ea, b - a)),
        "neg": (lambda: (-ea, -a)),
        "add_enc": (lambda: (ea + eb, a + b)),
        "sub_enc": (lambda: (eb - ea, b - a)),
    }[op]()
    close(enc, sk, ref, 1e-8)


@HYP
@given(data=st.data(), shape=shapes, scalar=st.one_of(values, st.integers(-1000, 1000), st.sampled_from([0.25, -0.5, 0])))
def test_multiplication_by_plaintext(keypair, data, shape, scalar):
    pk, sk = keypair
    a = data.draw(tensors(shape))
    t = data.draw(tensors(shape))
    ea = EncryptedTensor.encrypt(a, pk)
    # encoding ``a`` rounds each value by up to 2^-33 (scale 32), which the product scales by the
    # operand; the operand itself is rounded to 24 significant bits
    close(ea * scalar, sk, a * scalar, 1e-8 + abs(scalar) * 2**-33 + abs(a).max().item() * abs(scalar) * 2**-23)
    close(scalar * ea, sk, a * scalar, 1e-8 + abs(scalar) * 2**-33 + abs(a).max().item() * abs(scalar) * 2**-23)
    close(ea * t, sk, a * t, 1e-8 + t.abs().max().item() * 2**-33 + (a.abs().max() * t.abs().max()).item() * 2**-23)
    if scalar != 0:
        close(ea / scalar, sk, a / scalar, (2**-33 + abs(a).max().item() * 2**-23) / abs(scalar) + 1e-12)


@HYP
@given(data=st.data(), m=st.integers(1, 5), d=st.integers(1, 5), k=st.integers(1, 3))
def test_matmul_shapes_match_torch(keypair, data, m, d, k):
    pk, sk = keypair
    A = data.draw(tensors((m, d)))
    v = data.draw(tensors((d,)))
    V = data.draw(tensors((d, k)))
    u = data.draw(tensors((m,)))
    ev, eV = EncryptedTensor.encrypt(v, pk), EncryptedTensor.encrypt(V, pk)
    eA = EncryptedTensor.encrypt(A, pk)

    def tol(P, Q):
        return 1e-7 + P.abs().max().item() * Q.abs().sum().item() * 2**-23

    close(A @ ev, sk, A @ v, tol(A, v))  # plain matrix @ encrypted vector (torch.Tensor.__matmul__ defers)
    close(v @ ev, sk, v @ v, tol(v, v))  # plain vector @ encrypted vector -> 0-d
    close(A @ eV, sk, A @ V, tol(A, V))
    close(ev @ V, sk, v @ V, tol(V, v))  # encrypted @ plain
    close(eA @ v, sk, A @ v, tol(v, A))
    close(u @ eA, sk, u @ A, tol(u, A))


@HYP
@given(data=st.data(), shape=st.sampled_from([(3,), (2, 3), (4, 1)]))
def test_sum_and_indexing(keypair, data, shape):
    pk, sk = keypair
    a = data.draw(tensors(shape))
    ea = EncryptedTensor.encrypt(a, pk)
    close(ea.sum(), sk, a.sum(), 1e-8)
    close(ea.sum(0), sk, a.sum(0), 1e-8)
    close(ea.sum(-1), sk, a.sum(-1), 1e-8)
    close(ea[0], sk, a[0], 1e-9)
    close(ea.reshape(-1), sk, a.reshape(-1), 1e-9)
    assert len(ea) == shape[0] and ea.numel() == a.numel()


def test_taylor_grad_runs_unchanged_on_encrypted_weight(keypair):
    pk, sk = keypair
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 6, generator=g, dtype=torch.float64)
    y = (torch.rand(20, generator=g) < 0.5).to(torch.float32)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    enc = taylor_grad(EncryptedTensor.encrypt(w, pk), X, y)
    assert isinstance(enc, EncryptedTensor)
    close(enc, sk, taylor_grad(w, X, y), 1e-6)
    # an SGD step and a FedProx term are linear too
    w_glob = torch.zeros(6, dtype=torch.float64)
    ew = EncryptedTensor.encrypt(w, pk)
    step = ew - 0.1 * (taylor_grad(ew, X, y) + 0.01 * (ew - w_glob))
    close(step, sk, w - 0.1 * (taylor_grad(w, X, y) + 0.01 * (w - w_glob)), 1e-6)


def test_scale_and_bound_tracking(keypair):
    pk, sk = keypair
    x = torch.tensor([1.5, -2.0], dtype=torch.float64)
    e = EncryptedTensor.encrypt(x, pk, scale=16)
    assert e.scale == 16 and e.bound_bits == 16 + 16 and e.headroom_bits == pk.max_bits - 32
    assert (e * 0.25).scale == 18  # exact plaintexts use the smallest exact scale
    assert (e * 3).scale == 16 and (e * 3).bound_bits == 34
    p = e * 0.1
    assert p.scale == 16 + 24 + 3  # 24 significant bits of 0.1 < 2^-3
    s = e + p
    assert s.scale == p.scale and s.bound_bits == max(e.bound_bits + p.scale - e.scale, p.bound_bits) + 1
    close(s, sk, x + x * 0.1, 1e-7)


def test_overflow_is_raised_before_the_operation(keypair):
    pk, sk = keypair
    e = EncryptedTensor.encrypt(torch.tensor([1.0, 2.0]), pk)
    x = e
    with pytest.raises(OverflowError, match="beyond the key's safe plaintext range"):
        for _ in range(100):
            x = x * 0.1
    assert x.bound_bits <= pk.max_bits
    close(x, sk, torch.tensor([1.0, 2.0], dtype=torch.float64) * 0.1 ** round((x.scale - 32) / 27), 1e-3)


def test_overflow_detected_on_decryption(keypair):
    pk, sk = keypair
    # a tensor whose metadata understates its value: the bound check on decryption catches it
    c = pk.encrypt_int(1 << 40)
    e = EncryptedTensor.from_ciphertexts(pk, [c], (1,), scale=0, bound_bits=20)
    with pytest.raises(OverflowError, match="exceeds the tensor's bound"):
        e.decrypt(sk)
    # a value in the guard band
    c = pk.encrypt_int(int(pk.n) // 2)
    e = EncryptedTensor.from_ciphertexts(pk, [c], (1,), scale=0, bound_bits=pk.max_bits)
    with pytest.raises(OverflowError, match="outside the safe range"):
        e.decrypt(sk)


def test_encrypt_ints_and_from_ciphertexts(keypair):
    pk, sk = keypair
    ints = [-(2**60), 0, 3, 2**61]
    e = EncryptedTensor.encrypt_ints(ints, (2, 2), pk, scale=10, bound_bits=62)
    assert e.decrypt_ints(sk) == ints
    torch.testing.assert_close(e.decrypt(sk), torch.tensor(ints, dtype=torch.float64).reshape(2, 2) / 1024)
    f = EncryptedTensor.from_ciphertexts(pk, e.ciphertexts, e.shape, scale=e.scale, bound_bits=e.bound_bits)
    assert f.decrypt_ints(sk) == ints
    with pytest.raises(OverflowError, match="declared bound"):
        EncryptedTensor.encrypt_ints([2**62], (1,), pk, scale=0, bound_bits=62)
    with pytest.raises(ValueError, match="do not fill shape"):
        EncryptedTensor.from_ciphertexts(pk, e.ciphertexts, (3,), scale=0, bound_bits=62)


def test_rerandomize_changes_ciphertexts_not_values(keypair):
    pk, sk = keypair
    x = torch.tensor([0.5, -3.25, 7.0], dtype=torch.float64)
    e = EncryptedTensor.encrypt(x, pk)
    r = e.rerandomize()
    assert all(a != b for a, b in zip(e.ciphertexts, r.ciphertexts))
    close(r, sk, x, 1e-9)


def test_ciphertext_times_ciphertext_is_refused(keypair):
    pk, _ = keypair
    e = EncryptedTensor.encrypt(torch.ones(3), pk)
    with pytest.raises(NotImplementedError, match="only additively homomorphic"):
        e * e
    with pytest.raises(NotImplementedError, match="only additively homomorphic"):
        e @ e
    with pytest.raises(NotImplementedError, match="divide by an encrypted"):
        e / e


def test_mixing_keys_and_bad_operands(keypair, other_keypair):
    pk, sk = keypair
    pk2, sk2 = other_keypair
    e, f = EncryptedTensor.encrypt(torch.ones(2), pk), EncryptedTensor.encrypt(torch.ones(2), pk2)
    with pytest.raises(KeyMismatchError, match="different public keys"):
        e + f
    with pytest.raises(KeyMismatchError, match="does not match"):
        e.decrypt(sk2)
    with pytest.raises(TypeError):
        e + "a"
    with pytest.raises(TypeError):
        e * object()
    with pytest.raises(TypeError):
        "a" @ e
    with pytest.raises(ValueError, match="cannot be broadcast"):
        e + torch.ones(3)
    with pytest.raises(ValueError, match="shape mismatch"):
        torch.ones(2, 3) @ e
    with pytest.raises(ValueError, match="NaN"):
        EncryptedTensor.encrypt(torch.tensor([float("nan")]), pk)


def test_quantize_is_exact_at_scales_beyond_float_range():
    from torchhefl.secure.encoding import quantize

    assert quantize(torch.tensor([1.5, -0.75, 0.0]), 1100) == [3 << 1099, -(3 << 1098), 0]
