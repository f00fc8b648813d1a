"""The key pair of a run: generated for it, or loaded from files written by ``python -m train.keys``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from torchhefl.exceptions import ConfigError
from torchhefl.secure import InsecureKeyWarning, PrivateKey, PublicKey, generate_keypair, load_private_key

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = ["PRIVATE_KEY_FILE", "PUBLIC_KEY_FILE", "run_keypair"]

PUBLIC_KEY_FILE = "public.json"
PRIVATE_KEY_FILE = "private.json"


def run_keypair(config: TrainConfig) -> tuple[PublicKey, PrivateKey]:
    """The key pair for ``config``: from ``config.extra["key_dir"]`` if set, else a fresh one.

    Fresh keys have ``config.key_bits`` bits; fewer than 2048 only with
    ``config.extra["allow_insecure_keys"]`` (and a warning).
    """
    allow_insecure = bool(config.extra.get("allow_insecure_keys", False))
    key_dir = config.extra.get("key_dir")
    if key_dir is not None:
        path = Path(key_dir) / PRIVATE_KEY_FILE
        if not path.is_file():
            raise ConfigError(f"--key-dir {key_dir}: no {PRIVATE_KEY_FILE} there (write one with python -m train.keys generate)")
        if os.name == "posix" and path.stat().st_mode & 0o077:
            warnings.warn(f"{path} is readable by other users; chmod 600 it", stacklevel=2)
        try:
            private_key = load_private_key(path, allow_insecure=allow_insecure)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--key-dir {key_dir}: {e}") from None
        bits = private_key.public_key.bits
        if bits < 2048 and not allow_insecure:
            raise ConfigError(f"--key-dir {key_dir}: the {bits}-bit key is insecure (use 2048 bits or more)")
        return private_key.public_key, private_key
    try:
        with warnings.catch_warnings():
            if allow_insecure:
                warnings.simplefilter("ignore", InsecureKeyWarning)
            public_key, private_key = generate_keypair(config.key_bits, allow_insecure=allow_insecure)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--key-bits {config.key_bits}: {e}") from None
    if allow_insecure and config.key_bits < 2048:
        warnings.warn(f"insecure {config.key_bits}-bit Paillier key: for tests and demos only", InsecureKeyWarning, stacklevel=2)
    return public_key, private_key
