"""``plain @ encrypted`` with half the rows on a second core, when that is measured to pay off.

An encrypted SGD step (the server-key mode) is one integer-matrix @ ciphertext-vector product, too
small to pay for forking each time. One :class:`~torchhefl.secure._parallel.ForkedHelper` is forked
on first use and kept for the life of the process; only bytes cross its pipe: the modulus in hex,
a wire-format :class:`~torchhefl.secure.EncryptedTensor`, an ``int64`` array of rows, and the
wire-format result. A :class:`~torchhefl.secure._parallel.SplitChooser` keeps using the helper only
while it is faster (a busy machine may have no second core). Both ways give the same ciphertexts.
"""

from __future__ import annotations

import time

import torch

from torchhefl.secure._parallel import ForkedHelper, SplitChooser
from torchhefl.secure.keys import PublicKey
from torchhefl.secure.tensor import EncryptedTensor

__all__ = ["CHOOSER", "HELPER", "MIN_ROWS_TO_SPLIT", "split_matmul", "split_product"]

MIN_ROWS_TO_SPLIT = 8
"""Products with fewer rows are computed serially (half of them is not worth a round trip)."""

_KEYS: dict[int, PublicKey] = {}  # the helper's public keys by modulus (filled in the helper process)


def _rows_times_tensor(job: tuple[str, bytes, object]) -> bytes:
    """The helper's work: ``rows @ tensor`` as wire bytes, from ``(n in hex, tensor bytes, int64 rows)``."""
    n_hex, blob, rows = job
    n = int(n_hex, 16)
    pk = _KEYS.setdefault(n, PublicKey(n))
    return (torch.from_numpy(rows) @ EncryptedTensor.from_bytes(blob, public_key=pk)).to_bytes()


HELPER = ForkedHelper(_rows_times_tensor)
"""The process's one helper for split products."""

CHOOSER = SplitChooser()
"""Whether splitting pays off on this machine, measured as the products run."""


def split_matmul(K: torch.Tensor, theta: EncryptedTensor) -> list:
    """The ciphertexts of ``K @ theta`` (``K`` an integer matrix), half the rows on the helper core
    when that is measured to be faster."""
    if K.shape[0] < MIN_ROWS_TO_SPLIT or not HELPER.usable():
        return (K @ theta).ciphertexts
    split = CHOOSER.split()
    start = time.perf_counter()
    out = split_product(K, theta) if split else (K @ theta).ciphertexts
    CHOOSER.record(split, time.perf_counter() - start)
    return out


def split_product(K: torch.Tensor, theta: EncryptedTensor) -> list:
    """The ciphertexts of ``K @ theta`` with the first half of the rows computed by the helper
    process (all of them here if the helper does not run or fails)."""
    half = K.shape[0] // 2
    pk = theta.public_key
    if not HELPER.submit((format(int(pk.n), "x"), theta.to_bytes(), K[:half].numpy().copy())):
        return (K @ theta).ciphertexts
    mine = (K[half:] @ theta).ciphertexts
    reply = HELPER.result()
    if reply is None:
        return (K @ theta).ciphertexts
    return EncryptedTensor.from_bytes(reply, public_key=pk).ciphertexts + mine
