"""Roles and protocol of federated training: Server, Client, strategies, exchanges, transport, runs."""

from torchhefl.federated.api import Federation
from torchhefl.federated.client import Client, local_batches, round_generator
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.exchange import ClientExchange, PlainClientExchange, PlainServerExchange, ServerExchange
from torchhefl.federated.server import Server
from torchhefl.federated.simulation import Simulation, build, run
from torchhefl.federated.strategies import STRATEGIES, FedAvg, FedProx, Strategy, get_strategy
from torchhefl.federated.transport import ClientUnavailableError, InProcessTransport

__all__ = [
    "STRATEGIES",
    "Client",
    "ClientExchange",
    "ClientUnavailableError",
    "FedAvg",
    "Federation",
    "FedProx",
    "InProcessTransport",
    "PlainClientExchange",
    "PlainServerExchange",
    "Server",
    "ServerExchange",
    "Simulation",
    "Strategy",
    "TrainConfig",
    "build",
    "get_strategy",
    "local_batches",
    "round_generator",
    "run",
]
