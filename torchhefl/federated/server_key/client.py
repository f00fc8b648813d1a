"""The site's side of the server-key scheme: it trains the encrypted global weights it is sent.

A site never sees a plaintext weight: it runs its local SGD steps on the ciphertexts with the
Taylor gradient (Eq 13, :func:`~torchhefl.federated.server_key.step.apply_step`), the same batches
as plain mode, no clipping (there is no plaintext gradient to clip). Each step is kept stable by
the site's own data instead: it runs at its batch's curvature-safe learning rate
(:func:`~torchhefl.nn.functional.safe_lr`), which the site computes from its batch and keeps. When the next step would leave
no room for a blinding mask, it refreshes its weights through the server
(:mod:`torchhefl.secure.refresh`); before upload it refreshes once more to the common base scale. A
refresh is server-driven, so it runs over transports where only the server sends requests
(Flower): the site answers the fit request with a ``refresh_req`` holding the blinded
ciphertexts, keeps its place in local training (a
:class:`~torchhefl.federated.server_key.continuation.Continuation`), and resumes when the server's
``refresh_ins`` arrives; its last answer is the ``fit_res``. It then uploads
``Enc(n_i * theta_i + mask_i)`` and ``Enc(n_i + mask'_i)``, re-randomised, once per round, where
``mask_i`` is secure aggregation's self-mask plus pairwise masks (:mod:`torchhefl.federated.secagg`):
every participant set, key and survivor set it accepts is checked against the roster of the sites'
signing keys. The standardisation statistics are summed under pairwise masks
(:mod:`torchhefl.secure.masking`) from signed set-up keys, under one participant set only.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from torchhefl.exceptions import ConfigError, MalformedMessageError, ProtocolError
from torchhefl.federated.client import Client, local_batches, round_generator
from torchhefl.federated.exchange import ClientExchange
from torchhefl.federated.messages import encode_request, payload_of
from torchhefl.federated.secagg import constants as secagg_kinds
from torchhefl.federated.secagg.site import SecAggSite, check_participants
from torchhefl.federated.server_key.constants import (
    BASE_SCALE,
    CLIP_NORM_MESSAGE,
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
from torchhefl.federated.server_key.continuation import (
    Continuation,
    decode_continuation,
    encode_continuation,
)
from torchhefl.federated.server_key.statistics import (
    mask_purpose,
    pack_counts,
    read_statistics_sum,
    setup_key_bytes,
)
from torchhefl.federated.statistics import MEDIAN, PURPOSES, STANDARDIZE, to_vector
from torchhefl.federated.server_key.step import apply_map, map_fits
from torchhefl.nn.functional import SAFE_STEP, add_bias_column, compose_prefixes
from torchhefl.secure import EncryptedTensor, PublicKey, strict_json, wire
from torchhefl.secure.encoding import quantize
from torchhefl.secure.identity import Roster, SiteIdentity
from torchhefl.secure.keys import MIN_SECURE_KEY_BITS
from torchhefl.secure.masked import MaskedVector
from torchhefl.secure.masking import PairwiseMasker, mask_label
from torchhefl.secure.refresh import RefreshClient
from torchhefl.secure.tensor import cts_to_array

__all__ = ["ServerKeyClient", "ServerKeyClientExchange"]

_HEX = re.compile(r"[0-9a-f]{1,4096}")  # a modulus of at most 16384 bits, as PublicKey.to_dict writes it


class ServerKeyClientExchange(ClientExchange):
    """Client side of the server-key scheme (the paper's HEM): pairwise masks, blinded refreshes, masked uploads. Holds no private key.

    Args:
        allow_insecure: accept a Paillier key below 2048 bits from the server (tests only).
        step_bits, value_bits, base_scale: the public fixed-point parameters (see :mod:`~torchhefl.federated.server_key.constants`).
        steps_per_product: compose at most this many local steps into one plaintext @ ciphertext
            product (default: all the steps of a round that fit, usually one product per round;
            1 runs one product per step).
        step_limit: the largest ``lr * lambda_max(batch Hessian)`` a local step takes
            (:func:`~torchhefl.nn.functional.safe_lr`), in ``(0, 2]``; ``None`` takes every step at
            the run's ``lr``, stable or not. Default: :data:`~torchhefl.nn.functional.SAFE_STEP`.

    The safe step is a site's own choice and stays on the site: its effective learning rates are
    never sent. The server sees only the aggregate of the updates, as before; that the aggregate
    moved less along a stiff direction than ``lr`` would have moved it tells the server no more than
    the update itself does (it is a function of the same batches, and a step that needed the cap
    would otherwise have blown up in plain view).
    """

    def __init__(
        self,
        *,
        allow_insecure: bool = False,
        step_bits: int = STEP_BITS,
        value_bits: int = VALUE_BITS,
        base_scale: int = BASE_SCALE,
        steps_per_product: int | None = None,
        step_limit: float | None = SAFE_STEP,
    ) -> None:
        super().__init__()
        if step_limit is not None and not (isinstance(step_limit, (int, float)) and 0.0 < step_limit <= 2.0):
            raise ConfigError(f"step_limit must be a number in (0, 2] (or None), got {step_limit!r}")
        self.allow_insecure = allow_insecure
        self.step_bits, self.value_bits, self.base_scale = step_bits, value_bits, base_scale
        #: the most local steps composed into one product (``None``: a whole round, the default)
        self.steps_per_product = steps_per_product
        #: the largest ``lr * lambda_max`` of a local step (``None``: no cap)
        self.step_limit = step_limit
        self.public_key: PublicKey | None = None
        self.masker: PairwiseMasker | None = None
        self.secagg: SecAggSite | None = None
        #: purpose -> the participant set this site sent those statistics under (it sends them under no other)
        self.stats_participants: dict[str, list[str]] = {}
        #: optional synchronous path to the key holder (request bytes -> reply bytes) for
        #: :meth:`ServerKeyClient.fit_encrypted` called directly; the protocol itself sends refresh
        #: requests as ``refresh_req`` replies and needs none
        self.channel: Callable[[bytes], bytes] | None = None
        self._refresher: RefreshClient | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def set_public_key(self, description: Mapping) -> None:
        """Accept the server's Paillier public key (``PublicKey.to_dict()`` form)."""
        n_hex, bits = description.get("n"), description.get("bits")
        if not isinstance(n_hex, str) or not _HEX.fullmatch(n_hex) or type(bits) is not int:
            raise MalformedMessageError("invalid Paillier public key from the server: n must be hexadecimal, bits an integer")
        try:
            public_key = PublicKey(int(n_hex, 16))
        except ValueError as e:
            raise MalformedMessageError(f"invalid Paillier public key from the server: {e}") from None
        if public_key.bits != bits:
            raise MalformedMessageError("the server's public key does not have the size it claims")
        if public_key.bits < MIN_SECURE_KEY_BITS and not self.allow_insecure:
            raise ProtocolError(f"the server's {public_key.bits}-bit key is insecure (at least {MIN_SECURE_KEY_BITS} bits)")
        self.public_key = public_key
        self._refresher = None

    @property
    def upload_scale(self) -> int:
        """The public scale of every masked upload: one product past the base scale."""
        return self.base_scale + self.step_bits

    @property
    def refresher(self) -> RefreshClient:
        """Blinds and unblinds this client's refreshes (through :attr:`channel` when one is set)."""
        if self.public_key is None:
            raise ProtocolError("no key yet: the server has not run the server-key set-up")
        if self._refresher is None or self._refresher.channel is not self.channel:
            self._refresher = RefreshClient(self.channel, self.public_key, value_bits=self.value_bits)
            if not self._refresher.can_refresh(self.base_scale + self.step_bits):
                raise ProtocolError(f"a {self.public_key.bits}-bit key leaves no room for one encrypted step")
        return self._refresher

    def _key(self) -> PublicKey:
        if self.public_key is None or self.masker is None:
            raise ProtocolError("the server has not run the server-key set-up (keys and pairwise seeds)")
        return self.public_key

    # -- payloads -------------------------------------------------------------------------------
    def read_global(self, payload: bytes) -> OrderedDict:
        raise ProtocolError("with --key-holder server a client never sees the plaintext model")

    def write_update(self, state, num_examples: int) -> bytes:
        raise ProtocolError("with --key-holder server a client uploads masked ciphertexts (write_masked_update)")

    def read_encrypted(self, payload: bytes, d: int) -> EncryptedTensor:
        """The encrypted global ``theta`` of shape ``(d,)``; its bound must be the public one."""
        theta = EncryptedTensor.from_bytes(payload, public_key=self._key())
        if tuple(theta.shape) != (d,):
            raise MalformedMessageError(f"encrypted parameters of shape {tuple(theta.shape)}, expected ({d},)")
        if theta.bound_bits > theta.scale + self.value_bits:
            raise MalformedMessageError(f"encrypted parameters exceed the public bound 2^{self.value_bits}")
        return theta

    def write_masked_update(
        self, theta: EncryptedTensor, num_examples: int, *, server_round: int, attempt: int, participants: Sequence[str]
    ) -> bytes:
        """``Enc(n * theta + mask)`` and ``Enc(n + mask')``, re-randomised, as wire bytes; the round's
        one upload (secure aggregation's masks, :meth:`SecAggSite.mask`)."""
        pk = self._key()
        if self.secagg is None:
            raise ProtocolError("no secure-aggregation state: the server has not run the set-up")
        mask = self.secagg.mask(server_round, theta.numel() + 1, int(pk.n))
        weights = MaskedVector.scaled(theta.flatten(), num_examples, mask[:-1])
        count = MaskedVector.encrypt(pk, [num_examples], mask[-1:])
        meta = {
            "format": PAYLOAD_FORMAT, "fingerprint": pk.fingerprint, "key_bits": pk.bits, "scale": theta.scale,
            "round": server_round, "attempt": attempt, "participants": sorted(participants),
        }
        arrays = {"weights": cts_to_array(weights.ciphertexts, pk), "count": cts_to_array(count.ciphertexts, pk)}
        return wire.encode(UPDATE_KIND, meta, arrays)

    def write_statistics(self, stats: Mapping[str, np.ndarray], *, purpose: str = STANDARDIZE) -> bytes:
        """The statistics of ``purpose``, masked for this site's participant set; each purpose is
        sent under one participant set only (a second set would let the server subtract two sums)."""
        pk = self._key()
        participants = sorted([self.masker.cid] + self.masker.peers)
        sent = self.stats_participants.get(purpose)
        if sent is not None and sent != participants:
            raise ProtocolError(
                f"client {self.masker.cid} already sent its {purpose} statistics under another participant set; it sends them under one only"
            )
        self.stats_participants[purpose] = participants
        vector = to_vector(purpose, stats)
        if purpose == MEDIAN:
            ints, scale = pack_counts(vector, pk.bits), 0
        else:
            ints, scale = quantize(torch.from_numpy(vector), STAT_SCALE), STAT_SCALE
        mask = self.masker.mask(mask_label(mask_purpose(purpose), participants), participants, len(ints), int(pk.n))
        masked = MaskedVector.encrypt(pk, ints, mask)
        meta = {
            "format": PAYLOAD_FORMAT, "fingerprint": pk.fingerprint, "key_bits": pk.bits, "scale": scale,
            "participants": participants, "purpose": purpose, "length": len(vector),
        }
        return wire.encode(STATS_KIND, meta, {"values": cts_to_array(masked.ciphertexts, pk)})

    def read_statistics(self, payload: bytes, *, purpose: str = STANDARDIZE) -> dict[str, np.ndarray]:
        return read_statistics_sum(payload, purpose)


class ServerKeyClient(Client):
    """A site under the server's key: trains the encrypted global weights it is sent, never seeing them.

    Takes :class:`~torchhefl.federated.client.Client`'s arguments with a
    :class:`ServerKeyClientExchange`; ``clip_norm`` must be ``None`` (ciphertexts cannot be clipped).

    A fit needs refreshes from the key-holding server. The client answers ``fit_ins`` (and each
    ``refresh_ins``) with a ``refresh_req`` carrying a blinded refresh request whenever it needs
    one, keeps where it is in local training, and carries on when the server's ``refresh_ins``
    arrives; the last answer is the ``fit_res``. Only the server sends requests, so the same
    protocol runs in process and over a network that lets clients only answer.
    """

    REQUEST_KINDS = Client.REQUEST_KINDS + (
        KEYS_INS, PEERS_INS, REFRESH_INS, secagg_kinds.KEYS_INS, secagg_kinds.SHARES_INS, secagg_kinds.CHECK_INS, secagg_kinds.UNMASK_INS,
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.exchange, ServerKeyClientExchange):
            raise ConfigError("ServerKeyClient needs a ServerKeyClientExchange")
        if self.clip_norm is not None:
            raise ConfigError(CLIP_NORM_MESSAGE)
        if self.privacy is not None:
            raise ConfigError("differential privacy needs plaintext gradients; with --key-holder server sites train on ciphertexts")
        self._continuation: Continuation | None = None
        self._saved_continuation = b""
        self._x25519: bytes | None = None
        self._saved_secagg = b""
        self._saved_stats: dict[str, list[str]] = {}

    # -- a site's own state, for deployments that rebuild the client per message -------------------
    def site_state(self) -> dict[str, bytes]:
        """What this client must keep across messages, as bytes: its X25519 private key, its secure
        aggregation state (this round's keys, seed and shares; the last round it uploaded in), the
        participant set of its statistics, and the continuation of a fit waiting for a refresh.
        Secret: for the site's own storage only."""
        ex = self.exchange
        x25519 = ex.masker.private_bytes() if ex.masker is not None else (self._x25519 or b"")
        continuation = encode_continuation(self._continuation) if self._continuation is not None else b""
        sa = ex.secagg.to_bytes() if ex.secagg is not None else self._saved_secagg
        stats = ex.stats_participants or self._saved_stats
        return {
            "x25519": x25519, "continuation": continuation, "secagg": sa,
            "stats": json.dumps(stats, sort_keys=True).encode() if stats else b"",
        }

    def restore_site_state(self, state: Mapping[str, bytes]) -> None:
        """Take back :meth:`site_state` (before the set-up requests are replayed)."""
        x25519 = bytes(state.get("x25519", b""))
        self._x25519 = x25519 or None
        self._saved_continuation = bytes(state.get("continuation", b""))
        self._continuation = None
        self._saved_secagg = bytes(state.get("secagg", b""))
        if self._saved_secagg and self.exchange.secagg is not None:
            self.exchange.secagg.restore(self._saved_secagg)
        stats = bytes(state.get("stats", b""))
        if stats:
            doc = strict_json.loads(stats, what="saved statistics participants")
            if isinstance(doc, list):  # saved before the passes had purposes: the standardisation's
                doc = {STANDARDIZE: doc}
            if not (
                isinstance(doc, dict) and set(doc) <= set(PURPOSES)
                and all(isinstance(ps, list) and all(isinstance(p, str) for p in ps) for ps in doc.values())
            ):
                raise MalformedMessageError("saved statistics participants are damaged")
            self._saved_stats = doc
            self.exchange.stats_participants = dict(doc)

    # -- set-up ---------------------------------------------------------------------------------
    def _identity(self) -> tuple[SiteIdentity, Roster]:
        ex = self.exchange
        if ex.identity is None or ex.roster is None:
            raise ConfigError(f"client {self.cid} has no signing key or roster: --key-holder server needs both")
        if ex.identity.cid != self.cid:
            raise ConfigError(f"client {self.cid} holds the signing key of {ex.identity.cid}")
        return ex.identity, ex.roster

    def _on_hem_keys(self, msg) -> bytes:
        identity, roster = self._identity()
        description = msg.meta.get("public_key")
        if not isinstance(description, dict):
            raise MalformedMessageError("hem_keys request without the server's public key")
        ex = self.exchange
        ex.set_public_key(description)
        ex.masker = PairwiseMasker(self.cid, self._x25519)
        context = ex.public_key.fingerprint
        if ex.secagg is None or ex.secagg.context != context:
            ex.secagg = SecAggSite(identity, roster, context=context)
            if self._saved_secagg:
                ex.secagg.restore(self._saved_secagg)
        key = ex.masker.public_bytes()
        signature = identity.sign(setup_key_bytes(context, self.cid, key))
        return encode_request(KEYS_RES, {"cid": self.cid, "x25519": key.hex(), "signature": signature.hex()})

    def _on_hem_peers(self, msg) -> bytes:
        _, roster = self._identity()
        ex = self.exchange
        peers = msg.meta.get("peers")
        if ex.masker is None or ex.secagg is None:
            raise ProtocolError("pairwise keys relayed before this client made its own")
        if not isinstance(peers, dict) or not all(isinstance(v, dict) for v in peers.values()):
            raise MalformedMessageError("hem_peers request needs a {cid: {x25519, signature}} map")
        check_participants(self.cid, roster, ex.secagg.threshold, list(peers), within=roster.sites, what="the set-up key list")
        keys = {}
        for cid, entry in peers.items():
            key, signature = entry.get("x25519"), entry.get("signature")
            try:
                raw, sig = bytes.fromhex(key), bytes.fromhex(signature)
            except (TypeError, ValueError):
                raise MalformedMessageError(f"the set-up key relayed for {cid!r} is not hexadecimal") from None
            roster.verify(cid, setup_key_bytes(ex.public_key.fingerprint, cid, raw), sig)
            keys[cid] = raw
        ex.masker.agree(keys)
        return encode_request(PEERS_RES, {"cid": self.cid})

    # -- secure aggregation, before and after the upload ------------------------------------------------
    def _secagg(self) -> SecAggSite:
        if self.exchange.secagg is None:
            raise ProtocolError(f"client {self.cid} got a secure-aggregation request before the set-up")
        return self.exchange.secagg

    def _on_secagg_keys(self, msg) -> bytes:
        server_round = msg.meta.get("round")
        advert = self._secagg().advertise(server_round)
        return encode_request(secagg_kinds.KEYS_RES, {"cid": self.cid, "round": server_round, **advert})

    def _on_secagg_shares(self, msg) -> bytes:
        server_round = msg.meta.get("round")
        shares = self._secagg().share(server_round, msg.meta.get("keys"))
        return encode_request(secagg_kinds.SHARES_RES, {"cid": self.cid, "round": server_round, "shares": shares})

    def _on_secagg_check(self, msg) -> bytes:
        server_round = msg.meta.get("round")
        signature = self._secagg().sign_survivors(server_round, msg.meta.get("survivors"))
        return encode_request(secagg_kinds.CHECK_RES, {"cid": self.cid, "round": server_round, "signature": signature})

    def _on_secagg_unmask(self, msg) -> bytes:
        server_round = msg.meta.get("round")
        shares = self._secagg().reveal(server_round, msg.meta.get("survivors"), msg.meta.get("signatures"))
        return encode_request(secagg_kinds.UNMASK_RES, {"cid": self.cid, "round": server_round, **shares})

    # -- fit, in steps between refreshes ------------------------------------------------------------
    def _on_fit(self, msg) -> bytes:
        server_round, config = self._check_fit(msg)
        attempt, participants = msg.meta.get("attempt", 1), msg.meta.get("participants")
        if (
            not isinstance(participants, list)
            or not all(isinstance(p, str) for p in participants)
            or self.cid not in participants
        ):
            raise MalformedMessageError("fit request without a participant list naming this client")
        self._secagg().take_shares(server_round, participants, msg.meta.get(secagg_kinds.SHARES_META))
        if self.standardizer is None:
            raise ProtocolError(f"client {self.cid} was asked to train before standardisation")
        exchange = self.exchange
        theta = exchange.read_encrypted(payload_of(msg), self.X.shape[1] + 1)
        mu = self._proximal_mu(config)
        anchor = theta if mu > 0 else None
        self._continuation = Continuation(
            server_round, attempt, list(participants), mu, theta.scale, theta, anchor0=anchor, anchor=anchor
        )
        self._saved_continuation = b""
        return self._carry_on(self._continuation)

    def _on_refresh(self, msg) -> bytes:
        c = self._continuation
        if c is None and self._saved_continuation:
            c = decode_continuation(self._saved_continuation, self.exchange._key())
        if c is None or c.pending is None:
            raise ProtocolError(f"client {self.cid} got a refresh it did not ask for")
        meta = msg.meta
        got = (meta.get("round"), meta.get("attempt"), meta.get("seq"))
        if [type(v) for v in got] != [int] * 3 or got != (c.server_round, c.attempt, c.seq):
            raise MalformedMessageError(
                f"refresh for round {meta.get('round')!r} attempt {meta.get('attempt')!r} request {meta.get('seq')!r}, "
                f"expected round {c.server_round} attempt {c.attempt} request {c.seq}"
            )
        self._continuation = c
        target, masks = c.pending
        with self.exchange.timer.phase("train"):
            c.theta = self.exchange.refresher.finish(payload_of(msg), masks, c.theta.shape, c.theta.scale, target)
        c.pending, c.anchor = None, c.anchor0
        c.refreshes += 1
        return self._carry_on(c)

    def _carry_on(self, c: Continuation) -> bytes:
        """Train until a refresh is needed (a ``refresh_req`` reply) or the update is ready (``fit_res``)."""
        exchange = self.exchange
        with exchange.timer.phase("train"):
            try:
                request = self._advance(c, to_base=True)
            except OverflowError as e:  # e.g. a proximal term too large for the fixed-point step
                self._continuation, self._saved_continuation = None, b""
                raise ProtocolError(f"client {self.cid} cannot train round {c.server_round} on ciphertexts: {e}") from None
        for phase, s in exchange.timer.take().items():
            c.seconds[phase] = c.seconds.get(phase, 0.0) + s
        if request is not None:
            c.seq += 1
            meta = {"cid": self.cid, "round": c.server_round, "attempt": c.attempt, "seq": c.seq}
            return encode_request(REFRESH_REQ, meta, request)
        self._continuation, self._saved_continuation = None, b""
        with exchange.timer.phase("encrypt"):
            payload = exchange.write_masked_update(
                c.theta, self.num_examples, server_round=c.server_round, attempt=c.attempt, participants=c.participants
            )
        for phase, s in exchange.timer.take().items():
            c.seconds[phase] = c.seconds.get(phase, 0.0) + s
        meta = {"cid": self.cid, "round": c.server_round, "attempt": c.attempt}
        return self._fit_reply(meta, payload, c.seconds)

    def _advance(self, c: Continuation, *, to_base: bool) -> bytes | None:
        """Run ``c``'s remaining local steps, as few products as fit (one per round at the
        defaults: :meth:`_next_product`); stop where a product needs a refresh first and return its
        blinded request (``c.pending`` keeps the masks). With ``to_base``, end with a refresh to the
        common upload scale if the steps did not end there. ``None`` once training is done."""
        ex = self.exchange
        refresher = ex.refresher
        batches = list(local_batches(self.num_examples, self.batch_size, self.local_epochs,
                                     round_generator(self.seed, self.index, c.server_round)))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the plaintext matrices are tiny: BLAS threads would only contend
        try:
            while c.step < len(batches):
                if not refresher.can_refresh(c.theta.scale + ex.step_bits):
                    request, masks = refresher.begin(c.theta, c.base)
                    c.pending = (c.base, masks)
                    return request
                end, (A, B, b) = self._next_product(batches, c)
                if c.anchor is not None and c.anchor is c.theta:  # the round's start: the anchor is theta
                    A, B = A + B, None
                elif c.anchor is None:
                    B = None
                theta_next = apply_map(
                    c.theta, A, b, B=B, anchor=c.anchor if B is not None else None,
                    step_bits=ex.step_bits, value_bits=ex.value_bits,
                )
                if c.anchor is not None:  # keep the anchor at theta's scale
                    k = 1 << ex.step_bits
                    pk = c.anchor.public_key
                    c.anchor = EncryptedTensor.from_ciphertexts(
                        pk, [pk.raw_mul(ct, k) for ct in c.anchor.ciphertexts],
                        c.anchor.shape, scale=theta_next.scale, bound_bits=theta_next.bound_bits,
                    )
                c.theta = theta_next
                c.step = end
                c.products += 1
        finally:
            torch.set_num_threads(threads)
        if to_base and c.theta.scale != ex.upload_scale:  # every upload at the common public scale
            request, masks = refresher.begin(c.theta, ex.upload_scale)
            c.pending = (ex.upload_scale, masks)
            return request
        return None

    def _next_product(self, batches: list, c: Continuation):
        """``(end, (A, B, b))``: the steps ``c.step .. end`` composed into one affine map
        (:func:`~torchhefl.nn.functional.compose_prefixes`, each step at its batch's safe learning
        rate under the exchange's ``step_limit``), the longest run from ``c.step`` whose every
        prefix fits the fixed point (at most the exchange's ``steps_per_product``; one step always)."""
        ex = self.exchange
        cap = len(batches) if ex.steps_per_product is None else min(len(batches), c.step + ex.steps_per_product)
        data = [(add_bias_column(self.X[idx]), self.y[idx]) for idx in batches[c.step : cap]]
        k, maps = 0, None
        for prefix in compose_prefixes(data, lr=self.lr, proximal_mu=c.proximal_mu, limit=ex.step_limit):
            fits = map_fits(prefix[0], prefix[1], ex.step_bits)
            if k and not fits:
                break
            k, maps = k + 1, prefix
            if not fits:  # a first step too large to fit: apply_map refuses it with the reason
                break
        return c.step + k, maps

    def fit_encrypted(self, theta: EncryptedTensor, server_round: int, *, proximal_mu: float = 0.0) -> EncryptedTensor:
        """Local SGD on the encrypted ``theta`` over this round's batches (those of plain mode).

        Refreshes through the exchange's synchronous :attr:`ServerKeyClientExchange.channel` whenever the
        next step would leave no room for a blinding mask. Returns ``theta`` at whatever scale the
        last step left. (The protocol path, :meth:`handle`, runs the same steps with refreshes as
        separate messages.)
        """
        if self.standardizer is None:
            raise ProtocolError(f"client {self.cid} was asked to train before standardisation")
        if self.exchange.channel is None:
            raise ProtocolError("fit_encrypted needs exchange.channel; the protocol path refreshes by message")
        anchor = theta if proximal_mu > 0 else None
        c = Continuation(server_round, 0, [self.cid], proximal_mu, theta.scale, theta, anchor0=anchor, anchor=anchor)
        refresher = self.exchange.refresher
        while (request := self._advance(c, to_base=False)) is not None:
            target, masks = c.pending
            c.theta = refresher.finish(self.exchange.channel(request), masks, c.theta.shape, c.theta.scale, target)
            c.pending, c.anchor = None, c.anchor0
        return c.theta
