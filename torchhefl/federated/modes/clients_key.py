"""``--mode he --key-holder clients``: the sites share a Paillier key pair; the server adds ciphertexts."""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

from torchhefl.exceptions import ConfigError
from torchhefl.federated.clients_key import (
    ClientKeyClientExchange,
    ClientKeyServerExchange,
    UploadEncoding,
    clients_key_parts,
    upload_encoding,
)
from torchhefl.federated.exchange import ServerExchange
from torchhefl.federated.keyring import run_keypair
from torchhefl.federated.modes.base import Mode, ModeParts, SiteParts
from torchhefl.secure import PublicKey, packing
from torchhefl.secure.masking import majority_threshold

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = ["ClientsKeyMode"]


class ClientsKeyMode(Mode):
    """The server only ever holds ciphertexts and the public key; the sites decrypt and evaluate."""

    name = "clients_key"
    cli_mode = "he"
    key_holder = "clients"
    uses_key = True
    signs = True
    sites_hold_key = True
    packs_updates = True

    def validate(self, config: TrainConfig) -> None:
        # a site accepts a global model only as the sum of signed uploads of a strict majority of
        # the roster (never fewer than 2): a round must ask at least that many sites to train
        if config.clients < 2:
            raise ConfigError("--key-holder clients needs at least 2 sites: a global model sums the signed uploads of at least 2")
        threshold = majority_threshold(config.clients)
        asked = min(config.clients, max(config.min_clients, math.ceil(config.fraction * config.clients)))
        if asked < threshold:
            raise ConfigError(
                f"--fraction {config.fraction} asks {asked} of the {config.clients} sites per round, but with --key-holder "
                f"clients a site accepts only a global model that sums the signed uploads of at least {threshold} "
                f"(a strict majority): raise --fraction or --min-clients"
            )
        self.encoding(config)

    def encoding(self, config: TrainConfig) -> UploadEncoding:
        """The run's :func:`~torchhefl.federated.clients_key.upload_encoding`; :class:`ConfigError`
        naming the limits if ``--he-resolution`` is finer than a packed slot can hold."""
        try:
            return upload_encoding(config)
        except ValueError:
            weight_bound = packing.MAX_TOTAL_WEIGHT // config.clients
            headroom = (config.clients * weight_bound).bit_length()
            value_bits = int(packing.MAX_ABS_VALUE).bit_length() - 1
            finest = packing.MAX_SLOT_BITS - 1 - value_bits - headroom
            raise ConfigError(
                f"--he-resolution {config.he_resolution:g} is finer than a packed slot holds: a slot has at most "
                f"{packing.MAX_SLOT_BITS} bits, |w| < {packing.MAX_ABS_VALUE:g} takes {value_bits + 1} and the total weight of "
                f"{config.clients} sites (up to {config.clients * weight_bound}) {headroom}, leaving {finest} after the "
                f"binary point: give at least 2^-{finest} ({2.0**-finest:.3g})"
            ) from None

    def parts(self, config: TrainConfig, initial: OrderedDict) -> ModeParts:
        return clients_key_parts(config, initial)

    def server_exchange(
        self, config: TrainConfig, initial: OrderedDict, *, public_key: PublicKey | None, key_dir: str | None,
        allow_insecure_keys: bool,
    ) -> ServerExchange:
        if public_key is None:
            raise ConfigError("--mode he, but the sites sent no public key")
        encoding = self.encoding(config)
        return ClientKeyServerExchange(public_key, initial, weight_bound=encoding.weight_bound, precision=encoding.precision)

    def site(self, config: TrainConfig, *, key_dir: str | None, allow_insecure_keys: bool) -> SiteParts:
        if not key_dir:
            raise ConfigError('--mode he needs the site\'s key: node config key-dir="/path/to/keys"')
        extra = {"key_dir": str(key_dir), "allow_insecure_keys": allow_insecure_keys}
        _, private_key = run_keypair(dataclasses.replace(config, extra=extra))
        encoding = self.encoding(config)
        return SiteParts(
            ClientKeyClientExchange(
                private_key, weight_bound=encoding.weight_bound, precision=encoding.precision, rounding=encoding.rounding
            )
        )
