"""What a mode hands to a run: the exchanges of the server and the sites, and the client class.

Kept apart from :mod:`torchhefl.federated.modes` so that the per-mode protocol modules
(:mod:`~torchhefl.federated.clients_key`, :mod:`~torchhefl.federated.server_key`) can build these without
importing the registry that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torchhefl.federated.client import Client

if TYPE_CHECKING:
    from torchhefl.federated.exchange import ClientExchange, ServerExchange
    from torchhefl.federated.server import Server
    from torchhefl.secure.identity import SiteIdentity

__all__ = ["ModeParts", "SiteParts"]


@dataclass
class ModeParts:
    """What a mode contributes to an in-process run: the exchanges, the client class, where the test set lives."""

    server_exchange: "ServerExchange"
    client_exchanges: "list[ClientExchange]"
    client_class: type[Client] = Client
    client_kwargs: dict = field(default_factory=dict)
    server_holds_test: bool = True
    extras: dict = field(default_factory=dict)
    #: the signing identity of the simulated site of a name, where the mode's sites sign and the
    #: mode makes their identities itself (``None``: a fresh one per site and run)
    identity_of: "Callable[[str], SiteIdentity] | None" = None
    #: called once the server and clients exist (e.g. to wire a back channel)
    connect: "Callable[[Server, list[Client]], None]" = lambda server, clients: None


@dataclass
class SiteParts:
    """What a mode contributes to one deployed site (one process): its exchange and client class."""

    exchange: "ClientExchange"
    client_class: type[Client] = Client
