"""``--mode he --key-holder clients``: the sites share the key pair, the server relays ciphertexts.

Each site sends ``Enc(n_i * w_i)`` packed in a :class:`SecureStateDict` together with ``Enc(n_i)``;
the server adds ciphertexts (it never holds the private key) and sends the encrypted sum back; sites
decrypt and divide by the decrypted total count. The server learns neither a weight nor a count.
The federated standardisation statistics take the same path, as :class:`PackedSum` vectors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.exchange import ClientExchange, ServerExchange
from torchhefl.federated.keyring import run_keypair
from torchhefl.federated.parts import ModeParts
from torchhefl.federated.strategies import Strategy
from torchhefl.secure import MAX_TOTAL_WEIGHT, PackedSum, PrivateKey, PublicKey, SecureStateDict
from torchhefl.secure.packed_sum import sum_packed

if TYPE_CHECKING:
    from torchhefl.federated.config import TrainConfig

__all__ = ["ClientKeyClientExchange", "ClientKeyServerExchange", "clients_key_parts"]

_STAT_FIELDS = ("count", "sum", "sumsq")


class ClientKeyServerExchange(ServerExchange):
    """Server side: holds the public key and the encrypted global model; only adds ciphertexts.

    Args:
        public_key: the sites' public key.
        initial_state: the initial global model (public: it is drawn before any data is seen).
        weight_bound: the public cap on one site's weight, which every site's update claims as its
            weight bound; an update claiming another is refused (more could overflow the packed
            sum, less could make it undecryptable). ``None``: no cap beyond the encoding's.
    """

    def __init__(
        self, public_key: PublicKey, initial_state: Mapping[str, torch.Tensor], *, weight_bound: int | None = None
    ) -> None:
        super().__init__()
        self.public_key = public_key
        self.weight_bound = weight_bound
        with self.timer.phase("encrypt"):
            # the initial model is public (drawn before any data is seen): no random factor needed
            self._global = SecureStateDict.encrypt(initial_state, public_key, public=True).to_bytes()
        reference = SecureStateDict.from_bytes(self._global, public_key=public_key)
        self._layout = reference.keys()
        self._reference_entries = reference.layout()

    def global_payload(self) -> bytes:
        return self._global

    def aggregate(self, payloads: Sequence, strategy: Strategy) -> None:
        if not strategy.weighs_by_samples:
            raise MalformedMessageError(f"{strategy!r} is not sample-weighted; the encrypted path is")
        updates = [self.read_update(p) if isinstance(p, (bytes, bytearray)) else p for p in payloads]
        with self.timer.phase("aggregate"):
            try:
                self._global = SecureStateDict.weighted_average(updates).to_bytes()
            except OverflowError as e:  # only without a cap per site: the claimed bounds add up too far
                raise ProtocolError(f"the updates cannot be summed: {e}") from None

    def check_update(self, payload: bytes, **context) -> SecureStateDict:
        """One client's update, parsed and checked (see :meth:`read_update`)."""
        return self.read_update(payload)

    def read_update(self, blob: bytes) -> SecureStateDict:
        """Parse one client's update; it must be under our key with the model's layout.

        Checks the format version, the key fingerprint, every name, shape and dtype, each
        ciphertext's range ``0 < c < n^2`` and that its weight bound fits the public cap per site.
        """
        update = SecureStateDict.from_bytes(blob, public_key=self.public_key)
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

    def check_statistics(self, payload: bytes) -> bytes:
        """Statistics under our key, of the length the first site's had (checked again when summed)."""
        part = PackedSum.from_bytes(payload, public_key=self.public_key)
        if len(part) < 3 or len(part) % 2 != 1:
            raise MalformedMessageError(f"statistics vector of length {len(part)} cannot hold a count, sums and squares")
        if part.terms != 1:
            raise MalformedMessageError(f"statistics vector claims to be a sum of {part.terms} vectors, not one site's")
        return payload

    def global_checkpoint(self) -> bytes:
        """The encrypted global model (the server never has it in plaintext)."""
        return self._global

    def restore_global(self, blob: bytes) -> None:
        restored = SecureStateDict.from_bytes(blob, public_key=self.public_key)
        if restored.keys() != self._layout or restored.layout() != self._reference_entries:
            raise MalformedMessageError("checkpointed model does not have the model's names, shapes and dtypes")
        self._global = bytes(blob)

    def sum_statistics(self, payloads: Sequence[bytes]) -> bytes:
        parts = [PackedSum.from_bytes(b, public_key=self.public_key) for b in payloads]
        if not parts:
            raise MalformedMessageError("no statistics to sum")
        if len({len(p) for p in parts}) != 1:
            raise MalformedMessageError(f"statistics of different lengths {sorted({len(p) for p in parts})}")
        try:
            return sum_packed(parts).to_bytes()
        except OverflowError as e:  # more vectors than a PackedSum adds
            raise MalformedMessageError(f"statistics cannot be summed: {e}") from None


class ClientKeyClientExchange(ClientExchange):
    """Client side: encrypts its weighted update, decrypts the aggregate.

    Args:
        private_key: the sites' shared key pair.
        weight_bound: the public cap on a site's sample count; it keeps the count itself hidden.
    """

    def __init__(self, private_key: PrivateKey, *, weight_bound: int) -> None:
        super().__init__()
        self.private_key = private_key
        self.public_key = private_key.public_key
        self.weight_bound = weight_bound
        self._d: int | None = None
        self._last: tuple[bytes, OrderedDict] | None = None

    def read_global(self, payload: bytes) -> OrderedDict:
        # the aggregate is sent twice, for evaluation and for the next round: decrypt it once
        if self._last is None or self._last[0] != payload:
            encrypted = SecureStateDict.from_bytes(payload, public_key=self.public_key)
            try:
                state = encrypted.decrypt(self.private_key)
            except OverflowError as e:  # a value no sum of valid updates can hold
                raise MalformedMessageError(f"the global model does not decrypt to valid parameters: {e}") from None
            self._last = (payload, state)
        return OrderedDict((k, v.clone()) for k, v in self._last[1].items())

    def write_update(self, state: Mapping[str, torch.Tensor], num_examples: int) -> bytes:
        if num_examples > self.weight_bound:
            raise OverflowError(f"{num_examples} examples exceed the public cap of {self.weight_bound} per site")
        enc = SecureStateDict.encrypt(
            state, self.public_key, weight=num_examples, weight_bound=self.weight_bound, coins=self.private_key.coins()
        )
        return enc.to_bytes()

    def write_statistics(self, stats: Mapping[str, np.ndarray]) -> bytes:
        vector = np.concatenate([np.asarray(stats[k], dtype=np.float64).reshape(-1) for k in _STAT_FIELDS])
        self._d = (len(vector) - 1) // 2
        return PackedSum.encrypt(vector, self.public_key, coins=self.private_key.coins()).to_bytes()

    def read_statistics(self, payload: bytes) -> dict[str, np.ndarray]:
        try:
            vector = PackedSum.from_bytes(payload, public_key=self.public_key).decrypt(self.private_key)
        except OverflowError as e:
            raise MalformedMessageError(f"the summed statistics do not decrypt to valid values: {e}") from None
        d = (len(vector) - 1) // 2
        if len(vector) != 2 * d + 1 or (self._d is not None and d != self._d):
            raise MalformedMessageError(f"statistics vector of length {len(vector)} does not fit {self._d} features")
        return {"count": vector[:1], "sum": vector[1 : 1 + d], "sumsq": vector[1 + d :]}


def clients_key_parts(config: TrainConfig, initial: OrderedDict):
    """The mode's parts for :func:`torchhefl.federated.simulation.build`.

    In simulation the key pair is made on the sites' side and handed to every site; the server
    object receives the public key only.
    """
    public_key, private_key = run_keypair(config)
    weight_bound = MAX_TOTAL_WEIGHT // config.clients
    return ModeParts(
        server_exchange=ClientKeyServerExchange(public_key, initial, weight_bound=weight_bound),
        client_exchanges=[ClientKeyClientExchange(private_key, weight_bound=weight_bound) for _ in range(config.clients)],
        server_holds_test=False,
        extras={"public_key": public_key},
    )
