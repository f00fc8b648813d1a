"""``--mode he --key-holder server``: the paper's HEM. The server holds the key; sites train on ciphertexts.

The protocol itself lives in :mod:`torchhefl.federated.server_key`, split by role.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import TYPE_CHECKING

from torchhefl.exceptions import ConfigError
from torchhefl.federated.exchange import ServerExchange
from torchhefl.federated.keyring import run_keypair
from torchhefl.federated.modes.base import Mode, ModeParts, SiteParts
from torchhefl.federated.server_key import CLIP_NORM_MESSAGE, ServerKeyClient, ServerKeyClientExchange, ServerKeyServerExchange, server_key_parts
from torchhefl.federated.server_key.constants import KEYS_INS, PEERS_INS
from torchhefl.federated.server_key.parts import step_limit_of
from torchhefl.secure import PublicKey

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = ["CLIP_NORM_MESSAGE", "EPSILON_MESSAGE", "MODEL_MESSAGE", "ServerKeyMode"]

#: why ``--epsilon`` cannot be given with the server's key
EPSILON_MESSAGE = (
    "--epsilon needs plaintext local gradients; with --key-holder server clients train on "
    "ciphertexts, so no gradient can be clipped or noised"
)

#: why only binary logistic regression trains with the server's key (``{what}`` names the refused model)
MODEL_MESSAGE = (
    "{what} cannot train with --key-holder server: sites there run SGD on ciphertexts, which Paillier "
    "allows only for a gradient affine in the weights (binary logistic regression with the Taylor loss); "
    "use --key-holder clients or --mode plain"
)


class ServerKeyMode(Mode):
    """Sites run SGD on the encrypted global weights; the server decrypts only the masked sum."""

    name = "server_key"
    cli_mode = "he"
    key_holder = "server"
    uses_key = True
    signs = True
    server_evaluates = True
    clips_gradients = False
    setup_kinds = (KEYS_INS, PEERS_INS)  # the sites' key agreement

    def validate(self, config: TrainConfig) -> None:
        if config.model != "logreg":
            raise ConfigError(MODEL_MESSAGE.format(what=f"--model {config.model}"))
        if config.data == "digits":
            self.validate_model(config, 10)
        if config.epsilon is not None:
            raise ConfigError(EPSILON_MESSAGE)
        if config.clip_norm is not None:
            raise ConfigError(CLIP_NORM_MESSAGE)

    def validate_model(self, config: TrainConfig, num_classes: int) -> None:
        if num_classes > 2:
            raise ConfigError(MODEL_MESSAGE.format(what=f"softmax regression on {num_classes} classes"))

    def validate_parts(self, model, loss_fn, optimizer_fn) -> None:
        from torchhefl.nn import LogisticRegression, TaylorLoss

        if type(model) is not LogisticRegression:
            raise ConfigError(MODEL_MESSAGE.format(what=f"a {type(model).__name__} model"))
        if loss_fn is not None and type(loss_fn) is not TaylorLoss:
            raise ConfigError(MODEL_MESSAGE.format(what=f"the loss {type(loss_fn).__name__}"))
        if optimizer_fn is not None:
            raise ConfigError(
                "an optimizer cannot be given with --key-holder server: the sites' steps are plain SGD "
                "composed into one plaintext map per round and applied to ciphertexts (set lr instead)"
            )

    def clip_norm_refusal(self) -> str | None:
        return CLIP_NORM_MESSAGE

    def parts(self, config: TrainConfig, initial: OrderedDict) -> ModeParts:
        return server_key_parts(config, initial)

    def server_exchange(
        self, config: TrainConfig, initial: OrderedDict, *, public_key: PublicKey | None, key_dir: str | None,
        allow_insecure_keys: bool,
    ) -> ServerExchange:
        extra = {"key_dir": key_dir or None, "allow_insecure_keys": allow_insecure_keys}
        _, private_key = run_keypair(dataclasses.replace(config, extra=extra))
        return ServerKeyServerExchange(private_key, initial)

    def site(self, config: TrainConfig, *, key_dir: str | None, allow_insecure_keys: bool) -> SiteParts:
        # hem_steps_per_product and hem_step_limit are a site's own choice (the server serves
        # whatever refreshes it asks for), as in server_key_parts; a deployment's run config leaves them unset
        exchange = ServerKeyClientExchange(
            allow_insecure=allow_insecure_keys, steps_per_product=config.extra.get("hem_steps_per_product"),
            step_limit=step_limit_of(config),
        )
        return SiteParts(exchange, ServerKeyClient)
