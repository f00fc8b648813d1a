"""The server's side of the server-key scheme (the paper's HEM): it holds the key pair and the
plaintext global model, and decrypts only sums.

Each round it sends the global ``theta = [weight..., bias]`` encrypted (one ciphertext per value)
at the public :data:`~torchhefl.federated.server_key.constants.BASE_SCALE`, serves the sites'
blinded refreshes (:func:`torchhefl.secure.refresh.serve_refresh`), multiplies the masked uploads
together and decrypts only the two sums: ``theta = sum(n_i theta_i) / sum(n_i)`` (FedAvg, Eq 14),
then evaluates on its held-out set. The uploads are masked by secure aggregation
(:mod:`torchhefl.federated.secagg`): a site that drops out mid-round is unmasked from the survivors'
shares, in the same attempt; no round is ever re-run. The standardisation statistics are summed
under pairwise masks from the sites' signed set-up keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from torchhefl.exceptions import MalformedMessageError, ProtocolError
from torchhefl.federated.exchange import FollowUp, ServerExchange
from torchhefl.federated.messages import (
    decode_state,
    encode_request,
    encode_state,
    same_int,
)
from torchhefl.federated.secagg import SecAggServer
from torchhefl.federated.server_key.constants import (
    BASE_SCALE,
    COUNT_BITS,
    KEYS_INS,
    KEYS_RES,
    PAYLOAD_FORMAT,
    PEERS_INS,
    PEERS_RES,
    REFRESH_INS,
    REFRESH_REQ,
    STAT_SCALE,
    STATS_KIND,
    STEP_BITS,
    UPDATE_KIND,
    VALUE_BITS,
)
from torchhefl.federated.server_key.statistics import (
    packed_length,
    read_statistics_sum,
    setup_key_bytes,
    unpack_counts,
)
from torchhefl.federated.statistics import MEDIAN, STANDARDIZE, check_length, from_vector
from torchhefl.federated.strategies import Strategy
from torchhefl.secure import EncryptedTensor, PrivateKey, wire
from torchhefl.secure.encoding import dequantize
from torchhefl.secure.identity import Roster
from torchhefl.secure.masked import MaskedVector
from torchhefl.secure.refresh import serve_refresh
from torchhefl.secure.tensor import array_to_cts, check_fingerprint

__all__ = ["ServerKeyServerExchange"]


class ServerKeyServerExchange(ServerExchange):
    """Server side of the server-key scheme (the paper's HEM): holds the key pair and the plaintext global model; decrypts only sums.

    Args:
        private_key: the server's key pair.
        initial_state: the initial global state_dict (``weight`` of shape ``(1, d)``, ``bias``).
        base_scale, value_bits, step_bits: public fixed-point parameters (see :mod:`~torchhefl.federated.server_key.constants`).

    Attributes:
        refreshes: refresh requests served so far.
        decryptions: what the server decrypted, in order: ``(purpose, number of values)`` with
            purpose ``"statistics_sum"``, ``"update_sum"``, ``"count_sum"`` or ``"refresh"``.
    """

    uploads_once = True

    @property
    def follow_ups(self) -> dict[str, FollowUp]:
        """Clients ask for refreshes mid-fit (:meth:`refresh`); the round result counts them."""
        return {REFRESH_REQ: FollowUp(REFRESH_INS, self.refresh, what="refresh request", counted_as="refreshes")}

    def __init__(
        self,
        private_key: PrivateKey,
        initial_state: Mapping[str, torch.Tensor],
        *,
        base_scale: int = BASE_SCALE,
        value_bits: int = VALUE_BITS,
        step_bits: int = STEP_BITS,
    ) -> None:
        super().__init__()
        self._private_key = private_key
        self.public_key = private_key.public_key
        self.base_scale, self.value_bits = base_scale, value_bits
        #: the public scale of the sites' uploads: one product of ``step_bits`` past the base scale
        self.upload_scale = base_scale + step_bits
        self._layout = [(k, tuple(v.shape), v.dtype) for k, v in initial_state.items()]
        self.theta = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in initial_state.values()])
        self.refreshes = 0
        self.decryptions: list[tuple[str, int]] = []
        #: fewest updates a masked sum may have: a strict majority of the roster, at least 2
        self.threshold = 2
        self.secagg: SecAggServer | None = None
        self._correction: list[int] | None = None
        self._total_count: int | None = None

    def set_roster(self, roster: Roster) -> None:
        """Take the sites' roster: it sets the threshold and the secure-aggregation rounds."""
        super().set_roster(roster)
        self.secagg = SecAggServer(roster, context=self.public_key.fingerprint)
        self.threshold = self.secagg.threshold

    def _secagg(self) -> SecAggServer:
        if self.secagg is None:
            raise ProtocolError("--key-holder server needs the sites' roster (their public signing keys)")
        return self.secagg

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, server) -> None:
        """Send the public key, collect the sites' signed X25519 keys and relay them to every site."""
        roster = self._secagg().roster
        ids = [cid for cid in server.transport.client_ids if cid in roster]
        request = encode_request(KEYS_INS, {"public_key": self.public_key.to_dict()})
        replies = server.broadcast(ids, request, KEYS_RES)
        if len(replies) < len(ids):
            missing = sorted(set(ids) - set(replies))
            raise ProtocolError(f"the pairwise key agreement needs every site; {', '.join(missing)} did not answer")
        peers = {}
        for cid, msg in replies.items():
            key, signature = msg.meta.get("x25519"), msg.meta.get("signature")
            try:
                if not (isinstance(key, str) and isinstance(signature, str)):
                    raise MalformedMessageError("no key or signature")
                raw, sig = bytes.fromhex(key), bytes.fromhex(signature)
                roster.verify(cid, setup_key_bytes(self.public_key.fingerprint, cid, raw), sig)
            except (ValueError, MalformedMessageError, ProtocolError) as e:
                raise ProtocolError(f"site {cid} answered the key agreement with an unusable reply: {e}") from None
            peers[cid] = {"x25519": key, "signature": signature}
        acks = server.broadcast(ids, encode_request(PEERS_INS, {"peers": peers}), PEERS_RES)
        if len(acks) < len(ids):
            raise ProtocolError("the pairwise key agreement needs every site; some did not take the relayed keys")

    def open_round(self, server, server_round: int, selected: list[str]) -> list[str]:
        """Secure aggregation's keys and shares (:meth:`SecAggServer.open_round`)."""
        self._correction = None
        return self._secagg().open_round(server, server_round, selected)

    def fit_meta(self, cid: str) -> dict:
        return self._secagg().fit_meta(cid)

    def close_round(self, server, server_round: int, uploaded: list[str]) -> None:
        """The signed survivor set and the revealed shares: the masks to take off the sum."""
        self._correction = self._secagg().close_round(
            server, server_round, uploaded, self.theta.numel() + 1, int(self.public_key.n)
        )

    # -- rounds ---------------------------------------------------------------------------------
    def global_payload(self) -> bytes:
        with self.timer.phase("encrypt"):
            try:
                enc = EncryptedTensor.encrypt(self.theta, self.public_key, scale=self.base_scale, value_bits=self.value_bits)
            except OverflowError as e:
                raise ProtocolError(f"the global model diverged: {e}") from None
            if enc.bound_bits > self.base_scale + self.value_bits:
                raise ProtocolError(f"the global model diverged beyond the public bound 2^{self.value_bits}")
            return enc.to_bytes()

    def aggregate(self, payloads: Sequence[bytes], strategy: Strategy) -> None:
        if not strategy.weighs_by_samples:
            raise ProtocolError(f"{strategy!r} is not sample-weighted; with --key-holder server the server aggregates sample-weighted sums")
        if not payloads:
            raise ProtocolError("no client updates to aggregate")
        if self._correction is None:
            raise ProtocolError("the round's uploads were not unmasked (secure aggregation did not close the round)")
        if len(payloads) < self.threshold:
            raise ProtocolError(
                f"only {len(payloads)} client update(s) reached the server; a masked sum needs at least "
                f"{self.threshold} (a strict majority of the sites, never fewer than 2)"
            )
        d = self.theta.numel()
        label = None
        uploads = []
        with self.timer.phase("aggregate"):
            for blob in payloads:
                meta, weights, count = self._read_update(blob, d)
                this = (meta["round"], tuple(meta["participants"]))
                if label is None:
                    label = this
                elif this != label:
                    raise ProtocolError("client updates were masked for different rounds or participant sets")
                uploads.append(weights.concat(count))
            correction, self._correction = self._correction, None
            total = MaskedVector.sum(uploads).unmasked(correction).ciphertexts
        with self.timer.phase("decrypt"):
            count_bound = COUNT_BITS
            (n_total,) = self._decrypt_sum("count_sum", total[-1:], scale=0, bound_bits=count_bound)
            if n_total < 1:
                raise ProtocolError(f"the masked sample counts sum to {n_total}: a client broke the protocol")
            sums = self._decrypt_sum(
                "update_sum", total[:-1], scale=self.upload_scale,
                bound_bits=self.upload_scale + self.value_bits + count_bound,
            )
        self.theta = dequantize(sums, self.upload_scale) / n_total

    def check_update(self, payload: bytes, *, server_round=None, attempt=None, participants=None) -> bytes:
        """Check one masked update before aggregation: key, format, ciphertext ranges, and masks made
        for this round and participant set (else the masks could not cancel)."""
        meta, _, _ = self._read_update(payload, self.theta.numel())
        if server_round is not None and meta["round"] != server_round:
            raise MalformedMessageError(f"masked update for round {meta['round']}")
        if participants is not None and meta["participants"] != sorted(participants):
            raise MalformedMessageError("masked update for another participant set")
        return payload

    def restore_global(self, blob: bytes) -> None:
        """Replace the global weights with a checkpoint's (``global_checkpoint`` bytes)."""
        state, _ = decode_state(blob, expected=self.global_state())
        self.theta = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in state.values()])

    def _decrypt_sum(self, purpose: str, cts: list, *, scale: int, bound_bits: int) -> list[int]:
        tensor = MaskedVector(self.public_key, cts).as_tensor(scale=scale, bound_bits=bound_bits)
        try:
            values = tensor.decrypt_ints(self._private_key)
        except OverflowError as e:
            raise ProtocolError(f"the masked {purpose.replace('_', ' ')} does not decrypt to a valid sum: {e}") from None
        self.decryptions.append((purpose, len(values)))
        return values

    def _read_update(self, blob: bytes, d: int):
        pk = self.public_key
        msg = wire.decode(blob, kind=UPDATE_KIND)
        meta = msg.meta
        check_fingerprint(meta, pk)
        if not (same_int(meta.get("format"), PAYLOAD_FORMAT) and same_int(meta.get("scale"), self.upload_scale)):
            raise MalformedMessageError(f"masked update of format {meta.get('format')!r} at scale {meta.get('scale')!r}")
        participants = meta.get("participants")
        if (
            type(meta.get("round")) is not int
            or not isinstance(participants, list)
            or not all(isinstance(p, str) for p in participants)
        ):
            raise MalformedMessageError("masked update without its round and participants")
        if set(msg.arrays) != {"weights", "count"}:
            raise MalformedMessageError("a masked update holds exactly 'weights' and 'count'")
        weights = MaskedVector(pk, array_to_cts(msg.arrays["weights"], pk, d))
        return meta, weights, MaskedVector(pk, array_to_cts(msg.arrays["count"], pk, 1))

    def check_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> bytes:
        """One site's masked statistics of ``purpose``: key, format, scale, purpose, a participant
        list, a length the purpose can have, ciphertexts in range (the masks hide the values until
        all are summed)."""
        self._read_statistics(payload, purpose)
        return payload

    def _read_statistics(self, blob: bytes, purpose: str) -> tuple[list[str], int, MaskedVector]:
        pk = self.public_key
        msg = wire.decode(blob, kind=STATS_KIND)
        meta = msg.meta
        check_fingerprint(meta, pk)
        scale = 0 if purpose == MEDIAN else STAT_SCALE
        if not (same_int(meta.get("format"), PAYLOAD_FORMAT) and same_int(meta.get("scale"), scale)) or set(msg.arrays) != {"values"}:
            raise MalformedMessageError("masked statistics with an unexpected format, scale or arrays")
        if meta.get("purpose", STANDARDIZE) != purpose:
            raise MalformedMessageError(f"masked statistics for {meta.get('purpose')!r}, asked for {purpose!r}")
        participants = meta.get("participants")
        if not isinstance(participants, list) or not all(isinstance(p, str) for p in participants):
            raise MalformedMessageError("masked statistics without a participant list")
        arr = msg.arrays["values"]
        count = arr.shape[0] if arr.ndim == 2 else -1
        length = meta.get("length", count)
        if type(length) is not int:
            raise MalformedMessageError("masked statistics with a length that is not an integer")
        check_length(purpose, length)
        expected = packed_length(length, pk.bits) if purpose == MEDIAN else length
        if count != expected:
            raise MalformedMessageError(f"masked statistics of {count} ciphertexts for {length} values")
        return participants, length, MaskedVector(pk, array_to_cts(arr, pk, count))

    def sum_statistics(self, payloads: Sequence[bytes], *, purpose: str = STANDARDIZE) -> bytes:
        pk = self.public_key
        total = None
        participants = length = None
        for blob in payloads:
            theirs, n, cts = self._read_statistics(blob, purpose)
            participants = theirs if participants is None else participants
            if theirs != participants:
                raise ProtocolError("statistics were masked for different participant sets")
            if length is not None and n != length:
                raise MalformedMessageError(f"masked statistics of {n} and {length} values")
            length = n
            total = cts if total is None else MaskedVector.sum([total, cts])
        if total is None:
            raise MalformedMessageError("no statistics to sum")
        if not isinstance(participants, list) or len(participants) != len(payloads):
            raise ProtocolError("statistics from fewer clients than were masked for: the masks cannot cancel")
        if len(payloads) < self.threshold:
            raise ProtocolError(f"statistics of {len(payloads)} site(s): a sum needs at least {self.threshold}")
        with self.timer.phase("decrypt"):
            scale = 0 if purpose == MEDIAN else STAT_SCALE
            ints = self._decrypt_sum("statistics_sum", total.ciphertexts, scale=scale, bound_bits=pk.max_bits)
        if purpose == MEDIAN:
            vector = unpack_counts([int(v) for v in ints], length, pk.bits)
        else:
            try:
                vector = dequantize(ints, STAT_SCALE).numpy()
            except OverflowError:
                raise ProtocolError("the masked statistics sum to values beyond the float range: a client broke the protocol") from None
        stats = from_vector(purpose, vector)
        if purpose == STANDARDIZE:
            self._total_count = int(round(float(stats["count"][0])))
        return encode_state(stats)

    def read_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> dict[str, np.ndarray]:
        return read_statistics_sum(payload, purpose)

    def global_state(self) -> OrderedDict:
        out, offset = OrderedDict(), 0
        for name, shape, dtype in self._layout:
            size = int(np.prod(shape)) if shape else 1
            out[name] = self.theta[offset : offset + size].reshape(shape).to(dtype).clone()
            offset += size
        return out

    # -- the refresh endpoint -------------------------------------------------------------------
    def refresh(self, request: bytes) -> bytes:
        """Serve one blinded refresh (bytes in, bytes out); see :mod:`torchhefl.secure.refresh`."""
        with self.timer.phase("refresh"):
            reply, seen = serve_refresh(request, self._private_key)
        self.refreshes += 1
        self.decryptions.append(("refresh", len(seen)))
        return reply
