"""SecureGenerator: OS-keyed ChaCha20 draws for DP noise and sampling. Statistical bounds are 6
standard errors wide at fixed sample sizes (a false failure about once in 10^9 runs)."""

import copy
import math
import pickle
import secrets

import numpy as np
import pytest
import torch

from torchhefl.privacy import InsecureNoiseWarning, SecureGenerator
from torchhefl.privacy.generator import KEY_BYTES, secure_generator

N = 200_000


@pytest.fixture
def keys(monkeypatch):
    """The keys generators draw from ``secrets.token_bytes``, recorded (the draw itself is untouched)."""
    drawn = []
    real = secrets.token_bytes

    def token_bytes(n=None):
        key = real(n)
        drawn.append(key)
        return key

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)
    return drawn


def test_uniform_draws_cover_the_2_53_grid_of_0_1_evenly():
    u = SecureGenerator().uniform(N)
    assert u.dtype == torch.float64 and u.shape == (N,)
    assert 0.0 <= u.min().item() and u.max().item() < 1.0
    assert torch.equal(u * 2.0**53, torch.floor(u * 2.0**53))  # multiples of 2^-53
    assert abs(u.mean().item() - 0.5) < 6 * math.sqrt(1 / 12 / N)
    assert abs(u.var().item() - 1 / 12) < 6 * math.sqrt(1 / 180 / N)  # Var((U - 1/2)^2) = 1/180
    # evenly over [0, 1): each of 10 bins holds N/10 draws, within 6 standard errors
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    assert (counts - N / 10).abs().max().item() < 6 * math.sqrt(N * 0.1 * 0.9)


def test_normal_draws_have_gaussian_moments():
    std = 3.0
    z = SecureGenerator().normal((N // 4, 4), std=std)
    assert z.dtype == torch.float64 and z.shape == (N // 4, 4)
    z = z.reshape(-1)
    assert abs(z.mean().item()) < 6 * std / math.sqrt(N)
    assert abs(z.var().item() - std**2) < 6 * std**2 * math.sqrt(2 / N)
    s = (z / std).double()
    assert abs((s**4).mean().item() - 3.0) < 6 * math.sqrt(96 / N)  # Gaussian kurtosis; E z^8 = 105
    within = (s.abs() < 1).double().mean().item()
    p = math.erf(1 / math.sqrt(2))
    assert abs(within - p) < 6 * math.sqrt(p * (1 - p) / N)


def test_each_normal_is_four_box_muller_draws_summed_and_halved():
    """Opacus' secure mode (Holohan & Braghin 2021, section 5.1, n = 2), on this generator's uniforms."""
    with pytest.warns(InsecureNoiseWarning):
        a, b = SecureGenerator.insecure_from_seed(5), SecureGenerator.insecure_from_seed(5)
    n, std = 1000, 0.7
    got = a.normal((n,), std=std)
    u = b.uniform(8 * n).numpy().reshape(4, 2, n)
    draws = std * np.sqrt(-2.0 * np.log(1.0 - u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])
    torch.testing.assert_close(got, torch.from_numpy(draws.sum(axis=0) / 2.0), rtol=1e-12, atol=1e-12)
    assert a.bytes_drawn == b.bytes_drawn == 64 * n  # 8 fresh uniforms of 8 bytes per coordinate


def test_zero_std_and_empty_shapes():
    g = SecureGenerator()
    assert torch.equal(g.normal((3, 2), std=0.0), torch.zeros(3, 2, dtype=torch.float64))
    assert g.normal((0,), std=1.0).shape == (0,) and g.uniform(0).shape == (0,)
    assert g.normal(torch.Size([2, 3]), std=1.0).shape == (2, 3)


def test_two_generators_draw_different_streams(keys):
    a, b = SecureGenerator(), SecureGenerator()
    assert len(keys) == 2 and keys[0] != keys[1] and all(len(k) == KEY_BYTES >= 32 for k in keys)
    assert a.random_bytes(64) != b.random_bytes(64)
    assert not torch.equal(a.normal((16,), std=1.0), b.normal((16,), std=1.0))
    # and one generator's stream goes on: no block repeats
    blocks = [a.random_bytes(64) for _ in range(100)]
    assert len(set(blocks)) == 100


def test_the_key_is_not_in_repr_attributes_or_a_pickle(keys):
    g = SecureGenerator()
    g.normal((10,), std=1.0)
    (key,) = keys
    text = repr(g)
    assert text == "SecureGenerator(key=OS entropy, bytes_drawn=640)"
    for form in (key, key.hex().encode(), key.hex().upper().encode(), str(int.from_bytes(key, "big")).encode()):
        assert form not in text.encode()
        for value in vars(g).values():
            assert form not in repr(value).encode()
            assert not (isinstance(value, (bytes, bytearray)) and form in value)
    for copier in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled or copied: its key never leaves the process"):
            copier(g)


def test_insecure_seeded_generators_repeat_their_stream_and_warn(keys):
    with pytest.warns(InsecureNoiseWarning, match="differential-privacy guarantee does not hold"):
        a = SecureGenerator.insecure_from_seed(1, 2, 3)
    with pytest.warns(InsecureNoiseWarning):
        b, c = SecureGenerator.insecure_from_seed(1, 2, 3), SecureGenerator.insecure_from_seed(1, 2, 4)
    assert keys == []  # no OS key: the stream is the seed's
    assert a.seeded and "INSECURE" in repr(a)
    assert a.random_bytes(32) == b.random_bytes(32) != c.random_bytes(32)
    with pytest.raises(TypeError, match=r"takes one or more integers, got \(1.5,\)"):
        SecureGenerator.insecure_from_seed(1.5)
    with pytest.raises(TypeError, match=r"takes one or more integers, got \(\)"):
        SecureGenerator.insecure_from_seed()


def test_errors():
    g = SecureGenerator()
    with pytest.raises(ValueError, match=r"std must be a finite number >= 0, got -1.0"):
        g.normal((2,), std=-1.0)
    with pytest.raises(ValueError, match=r"std must be a finite number >= 0, got nan"):
        g.normal((2,), std=float("nan"))
    with pytest.raises(ValueError, match=r"shape must not have negative sizes, got \(-1,\)"):
        g.normal((-1,), std=1.0)
    with pytest.raises(ValueError, match=r"n must be an integer >= 0, got -1"):
        g.uniform(-1)
    with pytest.raises(OverflowError, match=r"draws at most 274877906944 bytes; use a new generator"):
        g.random_bytes((1 << 38) + 1)
    assert g.bytes_drawn == 0  # the refused draw consumed nothing
    with pytest.raises(TypeError, match="generator must be a torchhefl.privacy.SecureGenerator, got Generator"):
        secure_generator(torch.Generator().manual_seed(0))
    assert isinstance(secure_generator(None), SecureGenerator) and secure_generator(g) is g
