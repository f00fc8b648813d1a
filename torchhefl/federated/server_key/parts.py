"""The server-key mode's wiring: a run configuration in, the server's and the sites' parts out."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from torchhefl.exceptions import ConfigError
from torchhefl.federated.keyring import run_keypair
from torchhefl.federated.parts import ModeParts
from torchhefl.federated.server_key.client import ServerKeyClient, ServerKeyClientExchange
from torchhefl.federated.server_key.constants import CLIP_NORM_MESSAGE, STEP_BITS
from torchhefl.federated.server_key.server import ServerKeyServerExchange
from torchhefl.nn.functional import SAFE_STEP

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = ["server_key_parts", "step_limit_of"]


def step_limit_of(config: TrainConfig) -> float | None:
    """The sites' cap on ``lr * lambda_max`` of a local step: ``config.extra["hem_step_limit"]``
    (``--hem-step-limit``), a number in ``(0, 2]`` or ``None`` for no cap; default
    :data:`~torchhefl.nn.functional.SAFE_STEP`."""
    limit = config.extra.get("hem_step_limit", SAFE_STEP)
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0.0 < limit <= 2.0:
        raise ConfigError(f"hem_step_limit must be a number in (0, 2] (or none), got {limit!r}")
    return float(limit)


def server_key_parts(config: TrainConfig, initial: OrderedDict) -> ModeParts:
    """The mode's parts for :func:`torchhefl.federated.simulation.build`.

    ``config.extra`` may set ``hem_step_bits`` (default :data:`STEP_BITS`),
    ``hem_steps_per_product`` (default: every step of a round in one product) and
    ``hem_step_limit`` (:func:`step_limit_of`).
    """
    if config.clip_norm is not None:
        raise ConfigError(CLIP_NORM_MESSAGE)
    if config.clients < 2:
        raise ConfigError("--key-holder server needs at least 2 clients: a sum over one client is its update")
    if config.loss != "taylor":
        raise ConfigError("--key-holder server trains on ciphertexts with the Taylor gradient (Eq 13): use --loss taylor")
    step_bits = config.extra.get("hem_step_bits", STEP_BITS)
    if isinstance(step_bits, bool) or not isinstance(step_bits, int) or not 8 <= step_bits <= 48:
        raise ConfigError(f"hem_step_bits must be an int in [8, 48], got {step_bits!r}")
    per_product = config.extra.get("hem_steps_per_product")
    if per_product is not None and (isinstance(per_product, bool) or not isinstance(per_product, int) or per_product < 1):
        raise ConfigError(f"hem_steps_per_product must be a positive int (or unset: a whole round), got {per_product!r}")
    step_limit = step_limit_of(config)
    public_key, private_key = run_keypair(config)
    allow_insecure = bool(config.extra.get("allow_insecure_keys", False))
    server_exchange = ServerKeyServerExchange(private_key, initial, step_bits=step_bits)
    client_exchanges = [
        ServerKeyClientExchange(
            allow_insecure=allow_insecure, step_bits=step_bits, steps_per_product=per_product, step_limit=step_limit
        )
        for _ in range(config.clients)
    ]

    return ModeParts(
        server_exchange=server_exchange,
        client_exchanges=client_exchanges,
        client_class=ServerKeyClient,
        server_holds_test=True,
        extras={"public_key": public_key},
    )
