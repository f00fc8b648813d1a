"""One site's differentially private local training, for :class:`~torchhefl.federated.Client`.

Wraps :mod:`torchhefl.privacy` (per-sample clipping and noise from ``torch.func``, accounting from
Opacus) in the calls the client's training loop makes: its random source for a round, which
batches, one step, epsilon spent.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from torchhefl.privacy import DPConfig, SecureGenerator, poisson_batches, private_step

__all__ = ["SiteDP"]


class SiteDP:
    """DP-SGD at one site under a run-wide :class:`~torchhefl.privacy.DPConfig`.

    Each round the site takes ``dp.local_steps`` steps on Poisson-sampled batches (rate
    ``dp.sample_rate``, expected size ``dp.sample_rate * num_examples``), with the batches and the
    noise drawn from :meth:`generator`: a fresh key from the OS each round, never saved, so a
    resumed run draws new noise (the same distribution, not the same draws). Epsilon is a function
    of the rounds completed, so a resumed run reports what an uninterrupted one would.
    """

    def __init__(self, dp: DPConfig, num_examples: int) -> None:
        self.dp = dp
        self.num_examples = num_examples
        self.expected_batch_size = dp.sample_rate * num_examples

    def generator(self, seed: int, site: int, server_round: int) -> SecureGenerator:
        """The round's random source (see :meth:`DPConfig.generator <torchhefl.privacy.DPConfig.generator>`)."""
        return self.dp.generator(seed, site, server_round)

    def batches(self, num_examples: int, generator: SecureGenerator) -> Iterator[torch.Tensor]:
        return poisson_batches(num_examples, sample_rate=self.dp.sample_rate, steps=self.dp.local_steps, generator=generator)

    def step(self, model: nn.Module, loss_fn: nn.Module, xb: torch.Tensor, yb: torch.Tensor, generator: SecureGenerator) -> torch.Tensor:
        """Set ``.grad`` to a private gradient on the batch; returns the batch's (non-private) mean loss."""
        with torch.no_grad():
            loss = loss_fn(model(xb), yb) if len(yb) else torch.tensor(float("nan"))
        private_step(
            model,
            loss_fn,
            xb,
            yb,
            clip_norm=self.dp.clip_norm,
            noise_multiplier=self.dp.noise_multiplier,
            expected_batch_size=self.expected_batch_size,
            generator=generator,
        )
        return loss

    def epsilon(self, rounds_done: int) -> float:
        """Epsilon at the run's delta after ``rounds_done`` rounds of this site's steps."""
        return self.dp.epsilon_after(rounds_done * self.dp.local_steps)
