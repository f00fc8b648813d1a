"""The helper process and the split chooser: the same ciphertexts whichever way, and a choice by
measured time."""

import os
import sys

import pytest
import torch

from torchhefl.secure import EncryptedTensor
from torchhefl.secure._parallel import ForkedHelper, SplitChooser
from torchhefl.secure.split_product import (
    MIN_ROWS_TO_SPLIT,
    split_matmul,
    split_product,
)

_FORK = sys.platform.startswith("linux")


def _double(job):
    if job == "boom":
        raise RuntimeError("the helper's job failed")
    return [2 * v for v in job]


@pytest.mark.skipif(not _FORK, reason="the helper is forked on Linux only")
def test_helper_runs_jobs_and_answers_none_for_a_job_that_raised(monkeypatch):
    monkeypatch.setenv("TORCHHEFL_NUM_WORKERS", "2")
    helper = ForkedHelper(_double)
    try:
        assert helper.submit([1, 2, 3]) and helper.result() == [2, 4, 6]
        assert helper.process is not None and helper.process.is_alive() and helper.process.pid != os.getpid()
        assert helper.submit("boom") and helper.result() is None
        assert helper.submit([5]) and helper.result() == [10]  # still serving after a failed job
    finally:
        helper.close()
    assert helper.process is None and not helper.failed


def test_helper_is_not_started_with_one_worker(monkeypatch):
    monkeypatch.setenv("TORCHHEFL_NUM_WORKERS", "1")
    helper = ForkedHelper(_double)
    assert not helper.usable() and not helper.submit([1]) and helper.process is None and helper.failed


@pytest.mark.skipif(not _FORK, reason="the helper is forked on Linux only")
def test_a_dead_helper_is_retired(monkeypatch):
    monkeypatch.setenv("TORCHHEFL_NUM_WORKERS", "2")
    helper = ForkedHelper(_double)
    assert helper.usable()
    helper.process.kill()
    helper.process.join()
    submitted = helper.submit([1])  # the pipe may take the job before the loss is noticed
    assert (submitted and helper.result() is None) or not submitted
    assert helper.failed and not helper.usable() and helper.process is None


def test_chooser_tries_both_ways_then_keeps_the_faster_and_remeasures():
    chooser = SplitChooser(trials=2, recheck=10)
    seconds = {True: 1.0, False: 3.0}
    tried = []
    for _ in range(4):
        way = chooser.split()
        tried.append(way)
        chooser.record(way, seconds[way])
    assert sorted(tried) == [False, False, True, True]
    assert all(chooser.split() for _ in range(5))  # calls 5 to 9: the split way is faster
    seconds = {True: 3.0, False: 1.0}  # the machine got busy: call 10 starts measuring afresh
    for _ in range(4):
        way = chooser.split()
        chooser.record(way, seconds[way])
    assert not chooser.split()


def test_split_product_equals_the_serial_and_the_plaintext_product(keypair):
    pk, sk = keypair
    g = torch.Generator().manual_seed(5)
    K = torch.randint(-16, 16, (MIN_ROWS_TO_SPLIT + 3, 6), generator=g)
    x = torch.randn(6, generator=g, dtype=torch.float64)
    enc = EncryptedTensor.encrypt(x, pk)
    serial = (K @ enc).ciphertexts
    assert split_product(K, enc) == serial and split_matmul(K, enc) == serial
    ref = K @ enc
    product = EncryptedTensor.from_ciphertexts(pk, split_matmul(K, enc), ref.shape, scale=ref.scale, bound_bits=ref.bound_bits)
    torch.testing.assert_close(product.decrypt(sk), K.to(torch.float64) @ x, rtol=0, atol=1e-6)
