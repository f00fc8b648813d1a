"""What a mode is: the hooks a way of protecting parameters supplies to a run.

A mode picks the exchanges (:mod:`torchhefl.federated.exchange`) of the server and the sites, says
where the held-out set lives, checks the settings it cannot work with, and, through its server
exchange's :attr:`~torchhefl.federated.exchange.ServerExchange.follow_ups`, which mid-fit requests
the server serves. The simulation, the CLI, the Flower adapters, checkpoints and experiments ask
the registry (:mod:`torchhefl.federated.modes`) for the run's mode instead of knowing the modes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from torchhefl.federated.parts import ModeParts, SiteParts

if TYPE_CHECKING:
    from torch import nn

    from torchhefl.federated.config import TrainConfig
    from torchhefl.federated.exchange import ServerExchange
    from torchhefl.secure import PublicKey

__all__ = ["Mode", "ModeParts", "SiteParts"]


class Mode:
    """One way of protecting parameters. Subclass, set the class attributes, implement the hooks,
    and :func:`~torchhefl.federated.modes.register_mode` an instance."""

    #: the registry's name of the mode
    name: str = ""
    #: the ``--mode`` value that selects it
    cli_mode: str = ""
    #: the ``--key-holder`` value that selects it under ``cli_mode``; ``None``: the flag is ignored
    key_holder: str | None = None
    #: whether only the server can evaluate the model (its sites never read it): a deployed server
    #: then needs its own held-out set; elsewhere the sites evaluate on their shares and the server
    #: adds up their counts (an in-process run says where its test set lives in :class:`ModeParts`)
    server_evaluates: bool = False
    #: whether the run has a Paillier key pair (its public key is checkpointed; a resume needs ``--key-dir``)
    uses_key: bool = False
    #: whether the sites hold the key pair (they send its public key in their hello)
    sites_hold_key: bool = False
    #: whether the sites sign what they send with their long-term identity keys, checked against the
    #: roster (:mod:`torchhefl.secure.identity`); an in-process run makes the identities itself
    signs: bool = False
    #: whether sites train on plaintext gradients (which can be clipped, and noised under ``--epsilon``)
    clips_gradients: bool = True
    #: whether the sites' uploads are packed :class:`~torchhefl.secure.SecureStateDict` s, whose
    #: encoding ``--he-resolution`` and ``--he-rounding`` set
    packs_updates: bool = False

    #: the set-up requests (beyond standardisation) whose effect a site keeps for the rest of the
    #: run: a deployed site, rebuilt for every message, replays them into its new client
    setup_kinds: tuple[str, ...] = ()

    def validate(self, config: "TrainConfig") -> None:
        """Raise :class:`~torchhefl.exceptions.ConfigError` for a setting this mode cannot run. Default: nothing."""

    def validate_model(self, config: "TrainConfig", num_classes: int) -> None:
        """Raise :class:`~torchhefl.exceptions.ConfigError` if this mode cannot train ``config``'s
        model on data of ``num_classes`` classes (known once the data is loaded). Default: nothing."""

    def validate_parts(self, model: "nn.Module", loss_fn: "nn.Module | None", optimizer_fn) -> None:
        """Raise :class:`~torchhefl.exceptions.ConfigError` if this mode cannot train a model, loss
        and optimizer factory given from Python (:class:`~torchhefl.federated.api.Federation`;
        ``None`` for the defaults). Default: any."""

    def clip_norm_refusal(self) -> str | None:
        """Why a clipping bound cannot be given in this mode (``None`` where it can)."""
        return None

    def parts(self, config: "TrainConfig", initial: OrderedDict) -> ModeParts:
        """The server exchange and the sites' exchanges of an in-process run from the initial state_dict."""
        raise NotImplementedError

    def server_exchange(
        self, config: "TrainConfig", initial: OrderedDict, *, public_key: "PublicKey | None", key_dir: str | None,
        allow_insecure_keys: bool,
    ) -> "ServerExchange":
        """The server side of a deployment: from the sites' ``public_key`` (from their hello), or the
        server's own key folder ``key_dir`` where the server holds the key."""
        raise NotImplementedError

    def site(self, config: "TrainConfig", *, key_dir: str | None, allow_insecure_keys: bool) -> SiteParts:
        """One deployed site's side, with the site's own key folder ``key_dir`` where sites hold the key."""
        raise NotImplementedError

    def label(self) -> str:
        """A short name for run folders and progress bars (``plain``, ``he-clients``, ...)."""
        return self.cli_mode if self.key_holder is None else f"{self.cli_mode}-{self.key_holder}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

