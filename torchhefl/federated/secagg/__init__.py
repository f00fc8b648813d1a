"""Secure aggregation with dropout recovery (Bonawitz et al., CCS 2017), split by role.

:mod:`~torchhefl.federated.secagg.site` is a site's side, :mod:`~torchhefl.federated.secagg.server`
the server's, :mod:`~torchhefl.federated.secagg.constants` the message kinds; the primitives are in
:mod:`torchhefl.secure` (Shamir sharing, sealed boxes, masks, identities).
"""

from torchhefl.federated.secagg.server import SecAggServer
from torchhefl.federated.secagg.site import SecAggSite, SiteRound

__all__ = ["SecAggServer", "SecAggSite", "SiteRound"]
