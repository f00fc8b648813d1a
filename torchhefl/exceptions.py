"""Domain exceptions of torchhefl. Each subclasses the built-in that fits and carries its reason."""

__all__ = [
    "ConfigError",
    "DataError",
    "KeyMismatchError",
    "MalformedMessageError",
    "ProtocolError",
]


class MalformedMessageError(ValueError):
    """Bytes that are not a well-formed torchhefl message (truncated, corrupted, wrong version, out of range)."""


class KeyMismatchError(ValueError):
    """Values bound to different Paillier keys were mixed, or a message names an unexpected key."""


class DataError(ValueError):
    """A data set that cannot be used for training (missing file, bad column, bad values, bad label)."""


class ConfigError(ValueError):
    """A training configuration that is invalid or contradicts itself."""


class ProtocolError(RuntimeError):
    """A federated round could not complete (too few clients, a party broke the protocol)."""
