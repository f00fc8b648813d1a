"""``--mode he --key-holder server``: the paper's HEM, with SGD on encrypted weights.

The server holds the key pair and the plaintext global model. Each round it sends the global
``theta = [weight..., bias]`` encrypted; a site never sees a plaintext weight: it runs its local
SGD steps on the ciphertexts with the Taylor gradient (Eq 13),

    theta <- theta - lr * (taylor_grad(theta, X_b, y_b) + mu * (theta - theta_global)),

refreshing through the server (blinded, :mod:`torchhefl.secure.refresh`) when the fixed-point
scale runs out of room, and uploads its weights under pairwise masks (:mod:`torchhefl.secure.masking`)
that cancel in the sum; the server decrypts only ``sum(n_i theta_i)`` and ``sum(n_i)``.

Split by role, as Flower's SecAgg+ is:

* :mod:`~torchhefl.federated.server_key.constants`: the public fixed-point parameters, the message
  and payload kinds;
* :mod:`~torchhefl.federated.server_key.step`: one SGD step on encrypted weights (the plaintext
  step itself is :func:`torchhefl.nn.functional.sgd_step`);
* :mod:`~torchhefl.federated.server_key.client`: the site (:class:`ServerKeyClient`,
  :class:`ServerKeyClientExchange`), with its place in a fit kept by
  :mod:`~torchhefl.federated.server_key.continuation`;
* :mod:`~torchhefl.federated.server_key.server`: the key holder (:class:`ServerKeyServerExchange`);
* :mod:`~torchhefl.federated.server_key.parts`: the wiring for a run (:func:`server_key_parts`).
"""

from torchhefl.federated.server_key.client import ServerKeyClient, ServerKeyClientExchange
from torchhefl.federated.server_key.constants import (
    BASE_SCALE,
    CLIP_NORM_MESSAGE,
    STEP_BITS,
    VALUE_BITS,
)
from torchhefl.federated.server_key.parts import server_key_parts
from torchhefl.federated.server_key.server import ServerKeyServerExchange
from torchhefl.federated.server_key.step import apply_step

__all__ = [
    "BASE_SCALE",
    "CLIP_NORM_MESSAGE",
    "STEP_BITS",
    "ServerKeyClient",
    "ServerKeyClientExchange",
    "ServerKeyServerExchange",
    "VALUE_BITS",
    "apply_step",
    "server_key_parts",
]
