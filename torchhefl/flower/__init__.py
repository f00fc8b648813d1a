"""Multi-site deployment on Flower's deployment engine (extra ``torchhefl[flower]``).

The ServerApp (``torchhefl.flower.server_app:app``) and ClientApp
(``torchhefl.flower.client_app:app``) drive the same Server and Client objects as the
simulation, over Flower messages that carry torchhefl wire-format bytes. See ``docs/deploy.md``.
"""

try:
    import flwr  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("torchhefl.flower needs Flower: pip install 'torchhefl[flower]'") from e

from torchhefl.flower.deployment import RUN_CONFIG_DEFAULTS, DeploymentSettings, Site, build_server, read_hellos
from torchhefl.flower.records import pack, unpack
from torchhefl.flower.transport import FlowerTransport

__all__ = [
    "RUN_CONFIG_DEFAULTS",
    "DeploymentSettings",
    "FlowerTransport",
    "Site",
    "build_server",
    "generate_certificates",
    "pack",
    "read_hellos",
    "unpack",
    "write_app",
]


def __getattr__(name: str):
    # imported lazily, so that ``python -m torchhefl.flower.app`` / ``.certificates`` run cleanly
    if name == "write_app":
        from torchhefl.flower.app import write_app

        return write_app
    if name == "generate_certificates":
        from torchhefl.flower.certificates import generate_certificates

        return generate_certificates
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
