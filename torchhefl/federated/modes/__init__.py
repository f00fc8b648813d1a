"""The registry of modes (as Opacus' registry of accountants): each mode is one file here.

``plain`` (:mod:`.plain`), ``clients_key`` (:mod:`.clients_key`) and ``server_key``
(:mod:`.server_key`) are registered on import; :func:`register_mode` adds another. A
:class:`~torchhefl.federated.config.TrainConfig` names its mode by ``mode`` and ``key_holder``
(the CLI's ``--mode`` and ``--key-holder``); :func:`mode_of` finds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchhefl.exceptions import ConfigError
from torchhefl.federated.modes.base import Mode, ModeParts, SiteParts

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = ["MODES", "Mode", "ModeParts", "SiteParts", "cli_modes", "get_mode", "key_holders", "mode_of", "register_mode"]

#: registry name -> mode
MODES: dict[str, Mode] = {}


def register_mode(mode: Mode, *, force: bool = False) -> Mode:
    """Add ``mode`` to the registry under ``mode.name``; ``force`` replaces a mode of that name."""
    if not mode.name or not mode.cli_mode:
        raise ValueError(f"{mode!r} needs a name and a cli_mode")
    if mode.name in MODES and not force:
        raise ValueError(f"a mode named {mode.name!r} is registered already (force=True replaces it)")
    for other in MODES.values():
        if other.name != mode.name and other.cli_mode == mode.cli_mode and None in (other.key_holder, mode.key_holder):
            raise ValueError(f"--mode {mode.cli_mode} already selects {other.name!r} whatever the key holder")
        if other.name != mode.name and (other.cli_mode, other.key_holder) == (mode.cli_mode, mode.key_holder):
            raise ValueError(f"--mode {mode.cli_mode} --key-holder {mode.key_holder} already selects {other.name!r}")
    MODES[mode.name] = mode
    return mode


def get_mode(name: str) -> Mode:
    """The mode registered as ``name``."""
    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"unknown mode {name!r}; registered: {', '.join(MODES)}") from None


def cli_modes() -> tuple[str, ...]:
    """The ``--mode`` choices, in registration order."""
    return tuple(dict.fromkeys(m.cli_mode for m in MODES.values()))


def key_holders() -> tuple[str, ...]:
    """The ``--key-holder`` choices, in registration order."""
    return tuple(dict.fromkeys(m.key_holder for m in MODES.values() if m.key_holder is not None))


def mode_of(config: "TrainConfig") -> Mode:
    """The mode ``config.mode`` (and ``config.key_holder`` where it matters) selects."""
    candidates = [m for m in MODES.values() if m.cli_mode == config.mode]
    if not candidates:
        raise ConfigError(f"--mode must be one of {', '.join(cli_modes())}; got {config.mode!r}")
    for m in candidates:
        if m.key_holder is None or m.key_holder == config.key_holder:
            return m
    holders = ", ".join(m.key_holder for m in candidates if m.key_holder is not None)
    raise ConfigError(f"--key-holder must be one of {holders}; got {config.key_holder!r}")


from torchhefl.federated.modes import clients_key as _clients_key  # noqa: E402
from torchhefl.federated.modes import plain as _plain  # noqa: E402
from torchhefl.federated.modes import server_key as _server_key  # noqa: E402

register_mode(_plain.PlainMode())
register_mode(_clients_key.ClientsKeyMode())
register_mode(_server_key.ServerKeyMode())
