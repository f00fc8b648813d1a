"""The sites' signing keys and the roster of a Flower deployment, from node and run configs.

In the modes whose sites sign what they send (``Mode.signs``: both HE modes) every party needs the
roster of the sites' public signing keys, and every site its own signing key
(:mod:`torchhefl.secure.identity`). They come from files on each party's own machine, never from
the app bundle Flower ships to every node nor from anything the server sends:

* a SuperNode reads its identity from node config ``identity`` (default: ``identity.json`` in
  its ``key-dir``, when one is set) and the roster from node config ``roster``;
* the ServerApp reads the roster from run config ``server-roster`` (a path on the server's
  machine), else from ``roster.json`` in the app directory;
* run config ``roster-fingerprint`` names the roster every party must hold: each one checks the
  file it loaded against it, so that a stale or foreign roster stops the run at its start with
  one line naming the file, not with a signature failure in the middle of a round. A site trusts
  its own roster file; the fingerprint only makes sure that it is the same one everywhere.

A site's identity must be that of the site it runs, ``site<partition-id>``, and be listed in the
roster, which lists exactly the run's sites ``site0`` .. ``site<clients - 1>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from torchhefl.exceptions import ConfigError, MalformedMessageError
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.modes import mode_of
from torchhefl.federated.simulation import site_name
from torchhefl.secure.identity import IDENTITY_FILE, ROSTER_FILE, Roster, SiteIdentity

__all__ = ["check_fingerprint_setting", "load_server_roster", "load_site_identity"]

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def check_fingerprint_setting(value: object) -> str:
    """Run config ``roster-fingerprint``: empty, or 64 hexadecimal digits (returned in lower case)."""
    if not isinstance(value, str) or (value and not _FINGERPRINT.fullmatch(value.lower())):
        raise ConfigError(
            f"run config roster-fingerprint must be the roster's 64 hexadecimal digits "
            f"(python -m train.keys show roster.json prints them), got {value!r}"
        )
    return value.lower()


def _expected_fingerprint(config: TrainConfig, fingerprint: str) -> str:
    if not fingerprint:
        raise ConfigError(
            f"run config roster-fingerprint is empty: in {mode_of(config).label()} mode the sites sign with keys "
            "listed in a roster, and every party checks it holds that roster (python -m train.keys show roster.json)"
        )
    return fingerprint


def _load_roster(path: Path, config: TrainConfig, fingerprint: str, key: str) -> Roster:
    """The roster at ``path`` (named by config ``key``), checked against ``fingerprint`` and the run's sites."""
    try:
        roster = Roster.load(path)
    except OSError as e:
        raise ConfigError(f'{key}="{path}": {e.strerror or e}') from None
    except MalformedMessageError as e:
        raise ConfigError(f'{key}="{path}" is not a usable roster: {e}') from None
    if roster.fingerprint != fingerprint:
        raise ConfigError(
            f'{key}="{path}" has fingerprint {roster.fingerprint}, not the run config\'s roster-fingerprint {fingerprint}'
        )
    sites = [site_name(i) for i in range(config.clients)]
    if roster.sites != sorted(sites):
        raise ConfigError(
            f'{key}="{path}" lists {", ".join(roster.sites)}; the run has clients={config.clients} ({sites[0]} .. {sites[-1]})'
        )
    return roster


def load_site_identity(
    config: TrainConfig, node_config: Mapping[str, object], index: int, fingerprint: str
) -> tuple[SiteIdentity, Roster]:
    """Site ``index``'s signing key and the roster, from its node config (see the module docstring).

    Raises :class:`ConfigError` naming the node or run config key for a missing or wrong file."""
    cid = site_name(index)
    fingerprint = _expected_fingerprint(config, fingerprint)
    identity_path, key_dir = node_config.get("identity"), node_config.get("key-dir")
    if identity_path:
        path, key = Path(str(identity_path)), "node config identity"
    elif key_dir:
        path, key = Path(str(key_dir)) / IDENTITY_FILE, f"node config key-dir (its {IDENTITY_FILE})"
    else:
        raise ConfigError(
            f'node config identity="/path/to/{IDENTITY_FILE}" is needed: in {mode_of(config).label()} mode each site '
            f"signs with its own key (python -m train.keys identity --cid {cid})"
        )
    try:
        identity = SiteIdentity.load(path)
    except OSError as e:
        raise ConfigError(f'{key}="{path}": {e.strerror or e}') from None
    except MalformedMessageError as e:
        raise ConfigError(f'{key}="{path}" is not a usable identity: {e}') from None
    if identity.cid != cid:
        raise ConfigError(f'{key}="{path}" is the identity of {identity.cid}, but partition-id={index} runs {cid}')
    roster_path = node_config.get("roster")
    if not roster_path:
        raise ConfigError(
            f'node config roster="/path/to/{ROSTER_FILE}" is needed: in {mode_of(config).label()} mode each site '
            "checks its peers' signatures against the roster of the sites' keys"
        )
    roster = _load_roster(Path(str(roster_path)), config, fingerprint, "node config roster")
    if roster.public_bytes(cid) != identity.public_bytes():
        raise ConfigError(f'node config roster="{roster_path}" lists another signing key for {cid} than its {key}="{path}"')
    return identity, roster


def load_server_roster(config: TrainConfig, server_roster: str, fingerprint: str, app_dir: Path | None) -> Roster:
    """The ServerApp's roster: run config ``server-roster``, else ``roster.json`` in ``app_dir``
    (the app directory Flower installed, when known); checked against ``fingerprint``."""
    fingerprint = _expected_fingerprint(config, fingerprint)
    if server_roster:
        return _load_roster(Path(server_roster), config, fingerprint, "run config server-roster")
    if app_dir is None or not (Path(app_dir) / ROSTER_FILE).is_file():
        where = "the app directory" if app_dir is None else f"the app directory {app_dir}"
        raise ConfigError(
            f'run config server-roster="/path/to/{ROSTER_FILE}" is needed, or {ROSTER_FILE} in the app '
            f"(python -m torchhefl.flower.app --roster): {where} holds none"
        )
    return _load_roster(Path(app_dir) / ROSTER_FILE, config, fingerprint, f"the app's {ROSTER_FILE}")
