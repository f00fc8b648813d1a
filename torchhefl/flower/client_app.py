"""The Flower ClientApp of a site: ``torchhefl.flower.client_app:app``.

Each message carries one torchhefl request; the site's :class:`~torchhefl.federated.Client`
answers it with :meth:`~torchhefl.federated.Client.handle`. The private key is read from the
SuperNode's own node config (``key-dir``), never from the app bundle Flower ships to every node;
so are the site's signing key and the roster (node config ``identity`` and ``roster``).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from torchhefl.flower.deployment import DeploymentSettings, Site
from torchhefl.flower.records import HELLO_ACTION, pack, unpack

__all__ = ["app", "make_client_app"]

def make_client_app(parts=None) -> ClientApp:
    """A ClientApp whose sites train the run config's model on their CSV (or bundled share), or
    ``parts`` (:class:`~torchhefl.flower.parts.FlowerParts`)."""
    client_app = ClientApp()

    def _site(context: Context) -> Site:
        settings = DeploymentSettings.from_run_config(context.run_config)
        return Site(settings.config, context.node_config, context.state, roster_fingerprint=settings.roster_fingerprint,
                    parts=parts)

    @client_app.query(HELLO_ACTION)
    def hello(msg: Message, context: Context) -> Message:
        """Say which site this SuperNode runs, how many features it has, and the sites' public key."""
        return Message(_site(context).hello(), reply_to=msg)

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Answer one torchhefl request."""
        reply = _site(context).handle(unpack(msg.content))
        return Message(pack(reply), reply_to=msg)

    return client_app


app = make_client_app()
