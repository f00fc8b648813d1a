"""Poisson subsampling of a site's rows, the batch sampling that DP-SGD's accounting assumes."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from torchhefl.privacy._checks import check_sample_rate, check_steps
from torchhefl.privacy.generator import SecureGenerator, secure_generator

__all__ = ["poisson_batches"]


def poisson_batches(
    n: int, *, sample_rate: float, steps: int, generator: SecureGenerator | None = None
) -> Iterator[Tensor]:
    """Yield ``steps`` batches of row indices, each row drawn independently with ``sample_rate``.

    Batch sizes vary (their mean is ``sample_rate * n``) and a batch may be empty: this is the
    sampling under which the accountants of :mod:`torchhefl.privacy.accountant` are valid.
    Shuffled fixed-size batches are not.

    Args:
        n: number of rows of the site's data, >= 0.
        sample_rate: probability that a row is in a batch, in (0, 1].
        steps: number of batches, >= 0.
        generator: the random source, a :class:`~torchhefl.privacy.SecureGenerator`: which rows
            a step used is as secret as its noise. Default: ``None`` (a fresh one keyed from the OS).

    Yields:
        int64 tensors of shape ``(batch_size,)``, increasing indices into ``range(n)``.
    """
    check_sample_rate(sample_rate)
    check_steps(steps)
    check_steps(n, "n")
    generator = secure_generator(generator)
    for _ in range(steps):
        mask = generator.uniform(n) < sample_rate
        yield mask.nonzero(as_tuple=True)[0]
