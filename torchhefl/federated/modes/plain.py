"""``--mode plain``: parameters in the clear (the paper's DP, "directly pass")."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from torchhefl.federated.exchange import PlainClientExchange, PlainServerExchange, ServerExchange
from torchhefl.federated.modes.base import Mode, ModeParts, SiteParts
from torchhefl.secure import PublicKey

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = ["PlainMode"]


class PlainMode(Mode):
    """Sites send their trained state_dicts in the clear; the server averages and evaluates them."""

    name = "plain"
    cli_mode = "plain"

    def parts(self, config: TrainConfig, initial: OrderedDict) -> ModeParts:
        return ModeParts(PlainServerExchange(initial), [PlainClientExchange() for _ in range(config.clients)])

    def server_exchange(
        self, config: TrainConfig, initial: OrderedDict, *, public_key: PublicKey | None, key_dir: str | None,
        allow_insecure_keys: bool,
    ) -> ServerExchange:
        return PlainServerExchange(initial)

    def site(self, config: TrainConfig, *, key_dir: str | None, allow_insecure_keys: bool) -> SiteParts:
        return SiteParts(PlainClientExchange())
