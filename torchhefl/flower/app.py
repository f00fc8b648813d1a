"""Write the Flower App directory that ``flwr run`` submits (``flwr new`` needs the network; this does not).

    python -m torchhefl.flower.app myapp/ --set rounds=10 --set mode=plain
    python -m torchhefl.flower.app myapp/ --roster keys/roster.json    # HE modes: the sites' roster

The directory holds ``pyproject.toml`` and, with ``--roster``, a copy of the roster of the sites'
signing keys as ``roster.json`` (public; the ServerApp reads it unless the run config names
``server-roster``, and the run config's ``roster-fingerprint`` is set to its fingerprint). The
app's code is the installed ``torchhefl`` package, which every site and the SuperLink's machine
install themselves (``pip install 'torchhefl[flower]'``). Nothing private goes into it: Flower
ships the app to every SuperNode, so keys and data paths belong in each SuperNode's node config
instead; a site reads the roster from its own node config, never from the app.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10; tomli comes with flwr
    import tomli as tomllib

from torchhefl.exceptions import ConfigError, MalformedMessageError
from torchhefl.flower.deployment import RUN_CONFIG_DEFAULTS, DeploymentSettings
from torchhefl.secure.identity import ROSTER_FILE, Roster

__all__ = ["APP_NAME", "main", "write_app"]

APP_NAME = "torchhefl-app"

_TEMPLATE = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "torchhefl: federated training with Paillier-encrypted parameters, on Flower"
license = "Apache-2.0"
# installed by every site and the SuperLink's machine beforehand (runtime installation is off)
dependencies = ["torchhefl[flower]"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "torchhefl"

[tool.flwr.app.components]
serverapp = "torchhefl.flower.server_app:app"
clientapp = "torchhefl.flower.client_app:app"

[tool.flwr.app.config]
{config}
"""


def write_app(
    directory: str | Path, run_config: Mapping[str, object] | None = None, *, name: str = APP_NAME,
    roster: str | Path | None = None,
) -> Path:
    """Write ``directory/pyproject.toml`` with the run config defaults updated by ``run_config``.

    Every key must be one of :data:`RUN_CONFIG_DEFAULTS`; the values are checked as the ServerApp
    will check them, and ``lr`` and ``clip-norm``, where left out, take the mode's values (as the
    simulation's flags do: no clipping with the server's key, DP's under ``epsilon``). With ``roster`` (a roster file), a copy goes into the app as ``roster.json``
    and ``roster-fingerprint`` is set to its fingerprint (a different one in ``run_config`` is a
    :class:`ConfigError`). Returns the path of ``pyproject.toml``.
    """
    given = dict(run_config or {})
    values = {**RUN_CONFIG_DEFAULTS, **given}
    loaded = None
    if roster is not None:
        try:
            loaded = Roster.load(roster)
        except (OSError, MalformedMessageError) as e:
            raise ConfigError(f"--roster {roster}: {getattr(e, 'strerror', None) or e}") from None
        stated = values.get("roster-fingerprint")
        if stated and str(stated).lower() != loaded.fingerprint:
            raise ConfigError(f"--roster {roster} has fingerprint {loaded.fingerprint}, the run config says roster-fingerprint={stated}")
        values["roster-fingerprint"] = loaded.fingerprint
    # Flower hands the ServerApp every key of the app's table, so a key left out of ``run_config``
    # is written with the value the mode gives it (clip-norm 0 with the server's key; the DP
    # learning rate and clipping bound under epsilon), not with the bare default
    chosen = DeploymentSettings.from_run_config(given).config
    for key, value in (("lr", chosen.lr), ("clip-norm", chosen.clip_norm or 0.0)):
        if key not in given:
            values[key] = value
    DeploymentSettings.from_run_config(values)
    lines = [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path = Path(directory) / "pyproject.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_TEMPLATE.format(name=name, config="\n".join(lines)), encoding="utf-8")
    if loaded is not None:
        loaded.save(path.parent / ROSTER_FILE)
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ConfigError(f"run config values are booleans, numbers or strings, not {type(value).__name__}")


def _parse_setting(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word, e.g. mode=plain
    return key.strip(), value


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m torchhefl.flower.app", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, help="the app directory to write (pyproject.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run config value (repeatable)")
    p.add_argument("--roster", type=Path, help=f"the sites' roster: copied into the app as {ROSTER_FILE}, its fingerprint into the run config")
    args = p.parse_args(argv)
    try:
        path = write_app(args.directory, dict(_parse_setting(s) for s in args.set), roster=args.roster)
    except (ConfigError, OSError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
