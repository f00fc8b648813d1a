"""``--mode he --key-holder clients``: the sites share the key pair, the server relays ciphertexts.

Each site sends ``Enc(n_i * w_i)`` packed in a :class:`SecureStateDict` together with ``Enc(n_i)``
(the FedAvg weight is applied by the site before encrypting), signed with its identity key
(:mod:`torchhefl.federated.signed_uploads`); the server multiplies the ciphertexts, each upload
with weight 1 (it never holds the private key), and sends the encrypted sum back with the list of
the signed uploads it combined; sites decrypt and divide by the decrypted total count. The server
learns neither a weight nor a count. The set-up statistics (imputation, median histograms,
standardisation) travel as :class:`PackedSum` vectors, each signed by its site; the server relays
them all and each site checks and sums them itself (:mod:`~torchhefl.federated.signed_statistics`),
so the server cannot choose a site's fill values or standardisation, nor shift them by an offset.

A site decrypts, evaluates or trains on a global model only if it is:

* after round 0, the initial model: the public encryption (no random factor) of the very model
  the site was built with, which every party draws from the run's seed
  (:meth:`ClientExchange.set_initial_state <torchhefl.federated.exchange.ClientExchange.set_initial_state>`);
  it lists no upload. The site re-encrypts its own copy and compares.
* after round ``r >= 1``, a sum of signed uploads of round ``r``: every listed signature verifies
  against the roster; the signers are distinct roster sites, at least ``roster.threshold`` (a
  strict majority, never under 2) of them; every upload answers the same attempt of round ``r``;
  the header's coin list is exactly their nonces, each with weight 1; and every ciphertext strips
  over those coins (no fallback to a full decryption). A fit request of round ``r`` carries the
  model after round ``r - 1``, an evaluation request of round ``r`` the model after round ``r``.

Anything else is refused with a :class:`ProtocolError` naming what is wrong, before the site loads
the model, so it sends no loss and no histogram for it. Without the coin key the server can
make a ciphertext that strips over those coins only from the uploads themselves, so it can no
longer encrypt a model of its choosing (such as one that makes a site's evaluation counts read out
one feature of its held-out rows), forward one site's upload as the global model, or pass a past
round's sum off as this round's.

What remains:

* a plaintext offset: multiplying the honest sum by ``g^m = 1 + m n`` leaves the random factor,
  and so the coin check, unchanged, and shifts the decrypted model by ``m / W`` (``W`` the total
  count, which the server does not know but can bound). With a large enough offset along one
  feature the server still has the sites evaluate a model dominated by that feature, so the
  feature-leak attack is made harder to aim, not impossible; closing it needs an integrity check
  on the plaintext (for instance a linear MAC under a key derived from the sites' private key).
* the choice of uploads: any ``threshold`` or more of a round's signed uploads form an acceptable
  model, so the server may leave sites out (and may send different sites different such sums).
* a replay of the set-up statistics: a site's signed vector of an earlier run under the same key
  and roster passes for this run's (it is that site's own, honest, older statistics).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.exchange import ClientExchange, ServerExchange
from torchhefl.federated.keyring import run_keypair
from torchhefl.federated import signed_statistics
from torchhefl.federated.parts import ModeParts
from torchhefl.federated.signed_uploads import SignedGlobal, SignedUpload, UploadSignature
from torchhefl.federated.statistics import STANDARDIZE, check_length, from_vector, to_vector
from torchhefl.federated.strategies import Strategy
from torchhefl.secure import MAX_TOTAL_WEIGHT, PackedSum, PrivateKey, PublicKey, SecureStateDict, packing
from torchhefl.secure.encoding import STATE_DICT_FIXED_POINT, FixedPoint
from torchhefl.secure.identity import Roster, SiteIdentity
from torchhefl.secure.packed_sum import sum_packed

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = [
    "CheckedUpload",
    "ClientKeyClientExchange",
    "ClientKeyServerExchange",
    "UploadEncoding",
    "clients_key_parts",
    "simulated_identity",
    "upload_encoding",
]

_IDENTITY_LABEL = b"torchhefl simulated site identity v1"


@dataclass(frozen=True)
class UploadEncoding:
    """How the sites pack their uploads, agreed in the run config like the key: every site encrypts
    and every reader parses in this encoding, and bytes in another are refused.

    Attributes:
        precision: the packed encoding of every upload and every sum (resolution, range, headroom).
        rounding: how a site rounds its values to the resolution (``"nearest"`` or ``"stochastic"``).
        weight_bound: the public cap on one site's weight (its sample count), which every upload claims.
    """

    precision: FixedPoint
    rounding: str
    weight_bound: int


def upload_encoding(config: TrainConfig) -> UploadEncoding:
    """The run's :class:`UploadEncoding`, from public settings only (never from data).

    The cap per site shares the default encoding's total weight among ``config.clients`` sites.
    Without ``config.he_resolution``: the default encoding (resolution 2^-24, ``|v| < 8192``, 62-bit
    slots). With it: :func:`~torchhefl.secure.packing.precision` at that resolution, for the same
    range ``|v| < 8192`` and the total weight of every site at its cap. Raises ``ValueError`` if no
    packed slot holds that (:meth:`ClientsKeyMode.validate
    <torchhefl.federated.modes.clients_key.ClientsKeyMode.validate>` names the limits).
    """
    weight_bound = MAX_TOTAL_WEIGHT // config.clients
    if config.he_resolution is None:
        fp = STATE_DICT_FIXED_POINT
    else:
        fp = packing.precision(
            resolution=float(config.he_resolution), max_abs=packing.MAX_ABS_VALUE,
            max_total_weight=config.clients * weight_bound,
        )
    return UploadEncoding(fp, config.he_rounding, weight_bound)


@dataclass(frozen=True)
class CheckedUpload:
    """One site's upload as the server checked it: its signature and its ciphertexts."""

    signature: UploadSignature
    model: SecureStateDict


class ClientKeyServerExchange(ServerExchange):
    """Server side: holds the public key and the encrypted global model; only multiplies ciphertexts.

    Args:
        public_key: the sites' public key.
        initial_state: the initial global model (public: it is drawn before any data is seen).
        weight_bound: the public cap on one site's weight, which every site's update claims as its
            weight bound; an update claiming another is refused (more could overflow the packed
            sum, less could make it undecryptable). ``None``: no cap beyond the encoding's.
        precision: the packed encoding the sites agreed on (:attr:`UploadEncoding.precision`); an
            update in another is refused. Default: the default encoding.

    With the sites' roster (:meth:`set_roster`) it also checks each upload's signature as it
    arrives and never combines fewer uploads than the sites accept; without one (a deployment that
    has not given it the roster) the sites' own checks are the only ones.
    """

    def __init__(
        self, public_key: PublicKey, initial_state: Mapping[str, torch.Tensor], *, weight_bound: int | None = None,
        precision: FixedPoint = STATE_DICT_FIXED_POINT,
    ) -> None:
        super().__init__()
        self.public_key = public_key
        self.weight_bound = weight_bound
        self.precision = packing.check_encoding(precision)
        with self.timer.phase("encrypt"):
            # the initial model is public (drawn before any data is seen): no random factor needed,
            # and every site can re-encrypt its own copy to check it (so it is rounded to nearest)
            initial = SecureStateDict.encrypt(initial_state, public_key, public=True, precision=self.precision).to_bytes()
        self._global = SignedGlobal(initial).to_bytes()
        reference = self._parse(initial)
        self._layout = reference.keys()
        self._reference_entries = reference.layout()

    def global_payload(self) -> bytes:
        return self._global

    def aggregate(self, payloads: Sequence, strategy: Strategy) -> None:
        """The next global model: the product of the uploads' ciphertexts, each with weight 1 (each
        site weighted its own by its sample count before encrypting), listing their signatures."""
        if not strategy.weighs_by_samples:
            raise MalformedMessageError(f"{strategy!r} is not sample-weighted; the encrypted path is")
        uploads = [self.check_update(p) if isinstance(p, (bytes, bytearray)) else p for p in payloads]
        cids = [u.signature.cid for u in uploads]
        twice = sorted({c for c in cids if cids.count(c) > 1})
        if twice:
            raise ProtocolError(f"more than one upload signed by {', '.join(twice)}: the sites accept one per site")
        if self.roster is not None and len(uploads) < self.roster.threshold:
            raise ProtocolError(
                f"{len(uploads)} signed upload(s) to combine: the sites accept no global model of fewer than "
                f"{self.roster.threshold} of the {len(self.roster)} sites'"
            )
        with self.timer.phase("aggregate"):
            try:
                model = SecureStateDict.weighted_average([u.model for u in uploads])
            except OverflowError as e:  # only without a cap per site: the claimed bounds add up too far
                raise ProtocolError(f"the updates cannot be summed: {e}") from None
        self._global = SignedGlobal(model.to_bytes(), tuple(u.signature for u in uploads)).to_bytes()

    def check_update(
        self, payload: bytes, *, server_round: int | None = None, attempt: int | None = None,
        participants: Sequence[str] | None = None,
    ) -> CheckedUpload:
        """One client's signed update, parsed and checked: the ciphertexts as :meth:`read_update`
        checks them, the one nonce of their coins the signature names, the round and attempt of
        the request it answers, a signer among ``participants``, and (with the roster) the signature."""
        upload = SignedUpload.from_bytes(payload)
        signature = upload.signature
        model = self.read_update(upload.model)
        if model.coins != [(signature.nonce, 1)]:
            raise MalformedMessageError("the update's coins are not the one nonce its signature names")
        if server_round is not None and (signature.round, signature.attempt) != (server_round, attempt):
            raise MalformedMessageError(
                f"update signed for round {signature.round} attempt {signature.attempt}, expected round {server_round} attempt {attempt}"
            )
        if participants is not None and signature.cid not in participants:
            raise MalformedMessageError(f"update signed by {signature.cid}, who was not asked to train")
        if self.roster is not None:
            try:
                signature.verify(self.roster)
            except ProtocolError as e:  # an update that must not be aggregated, as check_update says
                raise MalformedMessageError(f"update refused: {e}") from None
        return CheckedUpload(signature, model)

    def read_update(self, blob: bytes) -> SecureStateDict:
        """Parse one client's encrypted update; it must be under our key with the model's layout.

        Checks the format version, the key fingerprint, the agreed encoding, every name, shape and
        dtype, each ciphertext's range ``0 < c < n^2`` and that its weight bound fits the public cap per site.
        """
        update = self._parse(blob)
        if update.keys() != self._layout:
            raise MalformedMessageError(f"update names {update.keys()} do not match the model's {self._layout}")
        if update.layout() != self._reference_entries:
            raise MalformedMessageError("update shapes or dtypes do not match the model's")
        if self.weight_bound is not None and update.weight_bound > self.weight_bound:
            raise MalformedMessageError(
                f"update claims a weight bound of {update.weight_bound}, above the public cap of {self.weight_bound} per site"
            )
        if self.weight_bound is not None and update.weight_bound < self.weight_bound:
            # every site claims the cap itself; a smaller claim could not bound the weight it hides,
            # and the sum would fail to decrypt at every site
            raise MalformedMessageError(
                f"update claims a weight bound of {update.weight_bound}, below the public cap of {self.weight_bound} that every site claims"
            )
        return update

    def _parse(self, blob: bytes) -> SecureStateDict:
        return SecureStateDict.from_bytes(blob, public_key=self.public_key, precision=self.precision)

    def check_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> bytes:
        """Statistics under our key, of a length ``purpose`` can have (all sites' lengths are
        compared when summed); with the roster, signed by a roster site for this pass."""
        part = self._statistics_part(payload, purpose)[1]
        check_length(purpose, len(part))
        if part.terms != 1:
            raise MalformedMessageError(f"statistics vector claims to be a sum of {part.terms} vectors, not one site's")
        return payload

    def _statistics_part(self, payload: bytes, purpose: str) -> tuple[str | None, PackedSum]:
        if self.roster is None:
            return None, PackedSum.from_bytes(payload, public_key=self.public_key)
        try:
            cid, inner = signed_statistics.read_signed(payload, self.roster, self.public_key.fingerprint, purpose)
        except ProtocolError as e:  # statistics that must not be relayed, as check_statistics says
            raise MalformedMessageError(str(e)) from None
        return cid, PackedSum.from_bytes(inner, public_key=self.public_key)

    def global_checkpoint(self) -> bytes:
        """The encrypted global model with its signed uploads (the server never has it in plaintext)."""
        return self._global

    def restore_global(self, blob: bytes) -> None:
        restored = self._parse(SignedGlobal.from_bytes(blob).model)
        if restored.keys() != self._layout or restored.layout() != self._reference_entries:
            raise MalformedMessageError("checkpointed model does not have the model's names, shapes and dtypes")
        self._global = bytes(blob)

    def sum_statistics(self, payloads: Sequence[bytes], *, purpose: str = STANDARDIZE) -> bytes:
        """The sum for the sites: with the roster, every site's signed vector, relayed for each site
        to check and sum itself (:mod:`~torchhefl.federated.signed_statistics`); without, their sum."""
        checked = [self._statistics_part(b, purpose) for b in payloads]
        if not checked:
            raise MalformedMessageError("no statistics to sum")
        if len({len(p) for _, p in checked}) != 1:
            raise MalformedMessageError(f"statistics of different lengths {sorted({len(p) for _, p in checked})}")
        if self.roster is not None:
            signers = [cid for cid, _ in checked]
            if len(set(signers)) != len(signers):
                raise ProtocolError(f"statistics signed twice by one site: {sorted(signers)}")
            return signed_statistics.bundle(list(payloads), purpose)
        try:
            return sum_packed([p for _, p in checked]).to_bytes()
        except OverflowError as e:  # more vectors than a PackedSum adds
            raise MalformedMessageError(f"statistics cannot be summed: {e}") from None


class ClientKeyClientExchange(ClientExchange):
    """Client side: encrypts and signs its weighted update, checks and decrypts the global model.

    Args:
        private_key: the sites' shared key pair.
        weight_bound: the public cap on a site's sample count; it keeps the count itself hidden.
        precision: the packed encoding the sites agreed on (:attr:`UploadEncoding.precision`): its
            uploads are in it, and a global model in another is refused. Default: the default encoding.
        rounding: how its values are rounded to the resolution, ``"nearest"`` (default) or
            ``"stochastic"`` (unbiased; the initial model, which every site re-encrypts to check,
            is always rounded to nearest).

    It needs its identity and the roster (:meth:`set_identity`) to sign and to check, and the
    initial model (:meth:`set_initial_state`, which its :class:`~torchhefl.federated.Client` gives it).
    """

    def __init__(
        self, private_key: PrivateKey, *, weight_bound: int, precision: FixedPoint = STATE_DICT_FIXED_POINT,
        rounding: str = "nearest",
    ) -> None:
        super().__init__()
        if rounding not in packing.ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(packing.ROUNDINGS)}, got {rounding!r}")
        self.private_key = private_key
        self.public_key = private_key.public_key
        self.weight_bound = weight_bound
        self.precision = packing.check_encoding(precision)
        self.rounding = rounding
        #: purpose -> length of the statistics vector this site sent, and the signed vectors it sent
        self._lengths: dict[str, int] = {}
        self._sent: dict[str, set[bytes]] = {}
        self._initial_state: OrderedDict | None = None
        self._initial: bytes | None = None  # the public encryption of the initial model, once made
        self._last: tuple[bytes, int, OrderedDict] | None = None

    def set_initial_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._initial_state = OrderedDict((k, v.detach().clone()) for k, v in state.items())
        self._initial = None

    def read_global_after(self, payload: bytes, after_round: int) -> OrderedDict:
        """The global model after round ``after_round``, once it has passed every check (see the
        module docstring); :class:`ProtocolError` naming what is wrong otherwise."""
        # the aggregate is sent twice, for evaluation and for the next round: check and decrypt it once
        digest = hashlib.sha256(payload).digest()
        if self._last is None or self._last[:2] != (digest, after_round):
            self._last = (digest, after_round, self._open_global(payload, after_round))
        return OrderedDict((k, v.clone()) for k, v in self._last[2].items())

    def _open_global(self, payload: bytes, after_round: int) -> OrderedDict:
        signed = SignedGlobal.from_bytes(payload)
        encrypted = SecureStateDict.from_bytes(signed.model, public_key=self.public_key, precision=self.precision)
        me = self.identity.cid if self.identity is not None else "this site"
        what = "initial model" if after_round == 0 else f"global model after round {after_round}"
        refuse = f"{me} refuses the server's {what}"
        if after_round == 0:
            if signed.uploads:
                raise ProtocolError(f"{refuse}: it lists {len(signed.uploads)} uploads, but the initial model is the agreed public one")
            if encrypted.to_bytes() != self._initial_model():
                raise ProtocolError(f"{refuse}: it is not the initial model every party draws from the run's seed")
            coins: list = []
        else:
            coins = self._check_uploads(signed.uploads, after_round, refuse)
            if encrypted.weight_bound != len(coins) * self.weight_bound:
                raise ProtocolError(
                    f"{refuse}: it claims a weight bound of {encrypted.weight_bound}, not the {len(coins) * self.weight_bound} "
                    f"of {len(coins)} uploads"
                )
        try:
            return encrypted.decrypt(self.private_key, coins=coins)
        except ValueError as e:  # the coins do not strip: not the sum of exactly those uploads
            raise ProtocolError(f"{refuse}: its ciphertexts are not the sum of the uploads it lists: {e}") from None
        except OverflowError as e:  # a value no sum of valid updates can hold
            raise MalformedMessageError(f"the global model does not decrypt to valid parameters: {e}") from None

    def _check_uploads(self, uploads: Sequence[UploadSignature], after_round: int, refuse: str) -> list:
        """The coin list the model must be made of, once every listed upload is a signed upload of
        ``after_round`` by a distinct roster site, and there are enough of them."""
        roster = self._roster()
        if len(uploads) < roster.threshold:
            raise ProtocolError(
                f"{refuse}: it sums {len(uploads)} signed upload(s), fewer than the {roster.threshold} of the "
                f"{len(roster)} sites' a global model needs"
            )
        seen: set[str] = set()
        for u in uploads:
            if u.cid in seen:
                raise ProtocolError(f"{refuse}: it lists {u.cid}'s upload twice")
            seen.add(u.cid)
            if u.round != after_round:
                raise ProtocolError(f"{refuse}: the upload it lists for {u.cid} is signed for round {u.round}")
            try:
                u.verify(roster)
            except ProtocolError as e:
                raise ProtocolError(f"{refuse}: {e}") from None
        if len({u.attempt for u in uploads}) > 1:
            raise ProtocolError(f"{refuse}: its uploads answer different attempts of round {after_round}")
        return [(u.nonce, 1) for u in uploads]

    def _initial_model(self) -> bytes:
        if self._initial_state is None:
            raise ProtocolError("this site was given no initial model to check the first global model against")
        if self._initial is None:
            self._initial = SecureStateDict.encrypt(
                self._initial_state, self.public_key, public=True, precision=self.precision
            ).to_bytes()
        return self._initial

    def _roster(self) -> Roster:
        if self.roster is None:
            raise ProtocolError("this site has no roster to check the global model's signatures against")
        return self.roster

    def write_update_for(
        self, state: Mapping[str, torch.Tensor], num_examples: int, *, server_round: int, attempt: int
    ) -> bytes:
        """``Enc(num_examples * state)`` with coins named by a fresh nonce, signed for this round and attempt."""
        if self.identity is None or self.roster is None:
            raise ProtocolError(
                "this site has no signing identity and roster: with --key-holder clients every upload is signed "
                "(set_identity gives a site its identity and the federation's roster)"
            )
        if num_examples > self.weight_bound:
            raise OverflowError(f"{num_examples} examples exceed the public cap of {self.weight_bound} per site")
        enc = SecureStateDict.encrypt(
            state, self.public_key, weight=num_examples, weight_bound=self.weight_bound, coins=self.private_key.coins(),
            precision=self.precision, rounding=self.rounding,
        )
        model = enc.to_bytes()
        [(nonce, _)] = enc.coins
        signature = UploadSignature.sign(
            self.identity, self.roster, round=server_round, attempt=attempt, nonce=nonce, model=model
        )
        return SignedUpload(signature, model).to_bytes()

    def write_statistics(self, stats: Mapping[str, np.ndarray], *, purpose: str = STANDARDIZE) -> bytes:
        vector = to_vector(purpose, stats)
        self._lengths[purpose] = len(vector)
        blob = PackedSum.encrypt(vector, self.public_key, coins=self.private_key.coins()).to_bytes()
        if self.identity is None:
            return blob
        signed = signed_statistics.sign(self.identity, self.roster, self.public_key.fingerprint, purpose, blob)
        self._sent.setdefault(purpose, set()).add(signed)
        return signed

    def read_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> dict[str, np.ndarray]:
        """The summed statistics of ``purpose``. With a signing identity, the server relays every
        site's signed vector: exactly one per roster site, this site's own among them unchanged
        (one it sent, if it sent any in this process), each for this pass; this site sums them itself."""
        if self.identity is None:
            total = PackedSum.from_bytes(payload, public_key=self.public_key)
        else:
            items = signed_statistics.read_bundle(payload, purpose)
            parts: dict[str, PackedSum] = {}
            for item in items:
                cid, inner = signed_statistics.read_signed(item, self.roster, self.public_key.fingerprint, purpose)
                if cid in parts:
                    raise ProtocolError(f"the relayed {purpose} statistics hold two vectors signed by {cid}")
                parts[cid] = PackedSum.from_bytes(inner, public_key=self.public_key)
                if parts[cid].terms != 1:
                    raise MalformedMessageError(f"the relayed {purpose} statistics of {cid} claim to be a sum")
            if sorted(parts) != sorted(self.roster.sites):
                raise ProtocolError(f"the relayed {purpose} statistics are signed by {sorted(parts)}, not by every roster site")
            sent = self._sent.get(purpose)
            if sent is not None and not sent & set(items):
                raise ProtocolError(f"the relayed {purpose} statistics do not hold a vector this site sent, unchanged")
            if len({len(p) for p in parts.values()}) != 1:
                raise MalformedMessageError(f"the relayed {purpose} statistics have different lengths")
            total = sum_packed(list(parts.values()))
        try:
            vector = total.decrypt(self.private_key)
        except OverflowError as e:
            raise MalformedMessageError(f"the summed statistics do not decrypt to valid values: {e}") from None
        sent = self._lengths.get(purpose)
        if sent is not None and len(vector) != sent:
            raise MalformedMessageError(f"{purpose} statistics of {len(vector)} values, this site sent {sent}")
        return from_vector(purpose, vector)


def simulated_identity(private_key: PrivateKey, cid: str) -> SiteIdentity:
    """The signing identity of simulated site ``cid`` among sites that share ``private_key``,
    derived from the key pair's secret primes and the site's name.

    For in-process runs (and tests that stand in for deployed sites) only: a deployed site keeps a
    signing key of its own in its key folder. Every simulated site holds the shared key pair, which
    decrypts everything the server relays anyway; deriving the identities from it gives a resumed
    simulation the same sites, whose signatures its checkpointed model carries. The server never
    holds the private key, so it cannot derive them.
    """
    p, q = int(private_key.p), int(private_key.q)
    pb, qb = (x.to_bytes((x.bit_length() + 7) // 8, "big") for x in (p, q))
    secret = hmac.new(_IDENTITY_LABEL, len(pb).to_bytes(4, "big") + pb + qb, hashlib.sha256).digest()
    return SiteIdentity(cid, hmac.new(secret, cid.encode(), hashlib.sha256).digest())


def clients_key_parts(config: TrainConfig, initial: OrderedDict):
    """The mode's parts for :func:`torchhefl.federated.simulation.build`.

    In simulation the key pair is made on the sites' side and handed to every site; the server
    object receives the public key only. The sites' identities are :func:`simulated_identity`.
    """
    public_key, private_key = run_keypair(config)
    encoding = upload_encoding(config)
    return ModeParts(
        server_exchange=ClientKeyServerExchange(
            public_key, initial, weight_bound=encoding.weight_bound, precision=encoding.precision
        ),
        client_exchanges=[
            ClientKeyClientExchange(
                private_key, weight_bound=encoding.weight_bound, precision=encoding.precision, rounding=encoding.rounding
            )
            for _ in range(config.clients)
        ],
        server_holds_test=False,
        extras={"public_key": public_key},
        identity_of=lambda cid: simulated_identity(private_key, cid),
    )
