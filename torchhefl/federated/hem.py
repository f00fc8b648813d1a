"""``--mode he --key-holder server``: the paper's HEM, with SGD on encrypted weights.

The server holds the key pair and the plaintext global model. Each round it sends the global
``theta = [weight..., bias]`` encrypted (one ciphertext per value); a client never sees a plaintext
weight: it runs its local SGD steps on the ciphertexts with the Taylor gradient (Eq 13),

    theta <- theta - lr * (taylor_grad(theta, X_b, y_b) + mu * (theta - theta_global)),

the same batches as plain mode, no clipping (there is no plaintext gradient to clip). Because the
Taylor gradient is affine in ``theta``, one step is ``M @ theta + b + c * theta_global`` for a
plaintext matrix ``M`` and vector ``b`` that depend on the batch only; :func:`sgd_step` is written
once with ``@ * + -`` and :func:`step_map` reads ``M``, ``b`` and ``c`` off it by running it on a
symbolic ``theta``, so each encrypted step is one plaintext-matrix @ ciphertext-vector product (fast
Straus multi-exponentiation) plus plaintext additions. ``M`` is quantised to a fixed, public
``step_bits`` bits after the binary point, so each step raises the fixed-point scale by exactly
``step_bits``: every scale and bound a client shows is a function of public parameters and the
step count, never of its data.

When the next step would leave no room for a blinding mask, the client refreshes its weights
through the server (:mod:`torchhefl.federated.refresh`); before upload it refreshes once more to the
common base scale. A refresh is server-driven, so it runs over transports where only the server
sends requests (Flower): the client answers the fit request with a ``refresh_req`` holding the
blinded ciphertexts, keeps its place in local training (a continuation: step, ciphertexts, secret
masks), and resumes when the server's ``refresh_ins`` arrives; its last answer is the ``fit_res``. It then uploads ``Enc(n_i * theta_i + mask_i)`` and ``Enc(n_i + mask'_i)``,
re-randomised, where the pairwise masks (:mod:`torchhefl.federated.masking`) of the round's
participants sum to zero modulo ``n``. The server multiplies the uploads together and decrypts only
the two sums: ``theta = sum(n_i theta_i) / sum(n_i)`` (FedAvg, Eq 14), then evaluates on its
held-out set. A client that drops out mid-round makes the server re-run the round without it, with
masks for the new participant set. The standardisation statistics are summed the same masked way.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import numpy as np
import torch

from torchhefl.exceptions import ConfigError, MalformedMessageError, ProtocolError
from torchhefl.federated.client import Client, local_batches, round_generator
from torchhefl.federated.config import TrainConfig
from torchhefl.federated.exchange import ClientExchange, FollowUp, ServerExchange
from torchhefl.federated.keyring import run_keypair
from torchhefl.federated.masking import PairwiseMasker, mask_label
from torchhefl.federated.messages import decode_state, encode_request, encode_state, payload_of, same_int
from torchhefl.federated.refresh import RefreshClient, serve_refresh
from torchhefl.federated.strategies import Strategy
from torchhefl.nn.functional import add_bias_column, taylor_grad
from torchhefl.secure import EncryptedTensor, PrivateKey, PublicKey, wire
from torchhefl.secure.encoding import dequantize, quantize
from torchhefl.secure.keys import MIN_SECURE_KEY_BITS
from torchhefl.secure.tensor import array_to_cts, check_fingerprint, cts_to_array

__all__ = [
    "BASE_SCALE",
    "CLIP_NORM_MESSAGE",
    "HEMClient",
    "HEMClientExchange",
    "HEMServerExchange",
    "STEP_BITS",
    "VALUE_BITS",
    "apply_step",
    "hem_parts",
    "sgd_step",
    "step_map",
]

BASE_SCALE = 32
"""Fixed-point bits after the binary point of the encrypted global weights (and after a refresh)."""

STEP_BITS = 20
"""Bits after the binary point of the plaintext step matrix; each encrypted step adds this to the scale."""

VALUE_BITS = 16
"""Public bound on a weight's magnitude, ``|theta_j| < 2^VALUE_BITS``: all bounds on the wire derive from it."""

_STAT_SCALE = 40
_COUNT_BITS = 32
_UPDATE_KIND = "torchhefl.hem.masked_update"
_STATS_KIND = "torchhefl.hem.masked_stats"
_FORMAT = 1
_HEX = re.compile(r"[0-9a-f]{1,4096}")  # a modulus of at most 16384 bits, as PublicKey.to_dict writes it


# -- the SGD step, written once ------------------------------------------------------------------
def sgd_step(theta, X: torch.Tensor, y: torch.Tensor, *, lr: float, proximal_mu: float = 0.0, anchor=None):
    """One local SGD step on the Taylor loss: ``theta - lr * (taylor_grad + mu * (theta - anchor))``.

    Runs on a ``torch.Tensor``, an :class:`~torchhefl.secure.EncryptedTensor` or a symbolic
    operand (see :func:`step_map`).

    Args:
        theta: flat parameters ``[weight..., bias]``, shape ``(d,)``.
        X: the batch with a bias column, shape ``(n, d)``; y: its labels in {0, 1}, shape ``(n,)``.
        lr: learning rate. proximal_mu: the FedProx coefficient (0 for FedAvg). anchor: the
            round's global parameters (needed when ``proximal_mu > 0``).
    """
    grad = taylor_grad(theta, X, y)
    if proximal_mu:
        grad = grad + (theta - anchor) * proximal_mu
    return theta - grad * lr


class _Affine:
    """A symbolic vector ``A @ theta + B @ anchor + c`` (for reading the step's coefficients)."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, c: torch.Tensor) -> None:
        self.A, self.B, self.c = A, B, c

    def __rmatmul__(self, P):
        return _Affine(P @ self.A, P @ self.B, P @ self.c)

    def __mul__(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        col = t.reshape(-1, 1) if t.dim() else t
        return _Affine(self.A * col, self.B * col, self.c * t)

    __rmul__ = __mul__

    def __add__(self, other):
        if isinstance(other, _Affine):
            return _Affine(self.A + other.A, self.B + other.B, self.c + other.c)
        return _Affine(self.A, self.B, self.c + torch.as_tensor(other, dtype=torch.float64))

    __radd__ = __add__

    def __neg__(self):
        return _Affine(-self.A, -self.B, -self.c)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other


def step_map(X: torch.Tensor, y: torch.Tensor, *, lr: float, proximal_mu: float = 0.0):
    """The coefficients of :func:`sgd_step` on one batch: ``theta' = M @ theta + b + c * anchor``.

    Obtained by running :func:`sgd_step` itself on a symbolic ``theta`` (exact: the Taylor gradient
    is affine). Returns ``(M, b, c)`` with ``M`` of shape ``(d, d)``, ``b`` of shape ``(d,)`` and the
    anchor coefficient ``c = lr * proximal_mu`` (a float), all float64.
    """
    d = X.shape[1]
    eye, zero = torch.eye(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    theta = _Affine(eye, zero, torch.zeros(d, dtype=torch.float64))
    anchor = _Affine(zero, eye, torch.zeros(d, dtype=torch.float64))
    out = sgd_step(theta, X, y, lr=lr, proximal_mu=proximal_mu, anchor=anchor)
    c = float(out.B[0, 0]) if d else 0.0
    if not torch.equal(out.B, c * eye):
        raise AssertionError("the proximal term is not a multiple of the anchor")  # sgd_step changed shape
    return out.A, out.c, c


def _fixed(v: float, scale: int) -> int:
    """``round(v * 2^scale)`` exactly, for any scale (half to even)."""
    return round(Fraction(v) * (1 << scale))


def apply_step(
    theta: EncryptedTensor,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    proximal_mu: float = 0.0,
    anchor: EncryptedTensor | None = None,
    step_bits: int = STEP_BITS,
    value_bits: int = VALUE_BITS,
) -> EncryptedTensor:
    """:func:`sgd_step` on an encrypted ``theta`` as one plaintext @ ciphertext product.

    ``anchor`` (with ``proximal_mu > 0``) must be at ``theta``'s scale. The result's scale is
    ``theta.scale + step_bits`` and its bound the public ``scale + value_bits``.
    """
    pk = theta.public_key
    M, b, c = step_map(X, y, lr=lr, proximal_mu=proximal_mu)
    if float(M.abs().max()) >= 2.0 ** (62 - step_bits):
        raise OverflowError(f"a step matrix entry of {float(M.abs().max()):.3g} does not fit {step_bits} fraction bits in 63")
    K = torch.round(torch.ldexp(M, torch.tensor(float(step_bits), dtype=torch.float64))).to(torch.int64)
    s = theta.scale
    if c:
        if anchor is None or anchor.scale != s or anchor.shape != theta.shape:
            raise ValueError("a proximal step needs the anchor at theta's scale and shape")
        kc = round(c * 2.0**step_bits)
        K = torch.cat([K, kc * torch.eye(K.shape[0], dtype=torch.int64)], dim=1)
        theta = EncryptedTensor.from_ciphertexts(
            pk, theta.ciphertexts + anchor.ciphertexts, (2 * K.shape[0],), scale=s, bound_bits=theta.bound_bits
        )
    scale = s + step_bits
    cts = [pk.raw_add_plain(ct, _fixed(v, scale)) for ct, v in zip(_split_matmul(K, theta), b.tolist())]
    return EncryptedTensor.from_ciphertexts(pk, cts, (K.shape[0],), scale=scale, bound_bits=scale + value_bits)


# -- two cores for one product ------------------------------------------------------------------------
class _Helper:
    """One forked helper process that computes some rows of ``plain @ encrypted`` (private).

    A step's product is too small to pay for forking each time, so one helper is forked on first
    use and kept for the life of the process. Only bytes cross the pipe: a wire-format
    :class:`EncryptedTensor`, an ``int64`` array of rows, and the wire-format result.
    """

    def __init__(self) -> None:
        self.conn = None
        self.process = None
        self.failed = False
        self.owner = os.getpid()

    def usable(self) -> bool:
        if self.owner != os.getpid():  # a forked copy of the process: the helper is not ours
            self.conn, self.process, self.failed, self.owner = None, None, False, os.getpid()
        if self.failed:
            return False
        if self.conn is not None:
            return True
        env = os.environ.get("TORCHHEFL_NUM_WORKERS")
        cores = int(env) if env is not None and env.isdigit() else (os.cpu_count() or 1)
        if cores < 2 or not sys.platform.startswith("linux") or mp.current_process().daemon:
            self.failed = True
            return False
        try:
            ctx = mp.get_context("fork")
            self.conn, child = ctx.Pipe()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with idle torch threads
                self.process = ctx.Process(target=_helper_loop, args=(child,), daemon=True)
                self.process.start()
            child.close()
            atexit.register(self.close)
        except (OSError, ValueError):
            self.failed, self.conn = True, None
        return not self.failed

    def close(self) -> None:
        if self.owner != os.getpid():
            return
        if self.conn is not None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.conn.close()
            self.conn = None
        if self.process is not None:
            self.process.join(timeout=1)
            self.process = None


def _helper_loop(conn) -> None:
    keys: dict[int, PublicKey] = {}
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        n_hex, blob, rows = job
        n = int(n_hex, 16)
        pk = keys.setdefault(n, PublicKey(n))
        try:
            out = (torch.from_numpy(rows) @ EncryptedTensor.from_bytes(blob, public_key=pk)).to_bytes()
        except Exception:  # noqa: BLE001 - the caller redoes the work itself and raises what it raises
            out = None
        conn.send(out)


_HELPER = _Helper()
_MIN_ROWS_TO_SPLIT = 8


class _SplitChooser:
    """Uses the helper only while it is measured to pay off (a busy machine may have no second core).

    The first calls alternate between the serial and the split product; afterwards the faster one
    (by median wall time) is used, and both are re-measured every ``recheck`` calls. The choice
    affects speed only: both give the same ciphertexts.
    """

    def __init__(self, trials: int = 3, recheck: int = 200) -> None:
        self.trials, self.recheck = trials, recheck
        self.samples: dict[bool, list[float]] = {True: [], False: []}
        self.calls = 0

    def split(self) -> bool:
        self.calls += 1
        if self.calls % self.recheck == 0:
            self.samples = {True: [], False: []}
        for mode in (True, False):
            if len(self.samples[mode]) < self.trials:
                return mode
        return statistics.median(self.samples[True]) < statistics.median(self.samples[False])

    def record(self, split: bool, seconds: float) -> None:
        if len(self.samples[split]) < self.trials:
            self.samples[split].append(seconds)


_CHOOSER = _SplitChooser()


def _split_matmul(K: torch.Tensor, theta: EncryptedTensor) -> list:
    """The ciphertexts of ``K @ theta`` (``K`` an integer matrix), half the rows on a helper core
    when that is measured to be faster."""
    if K.shape[0] < _MIN_ROWS_TO_SPLIT or not _HELPER.usable():
        return (K @ theta).ciphertexts
    split = _CHOOSER.split()
    start = time.perf_counter()
    out = _split_product(K, theta) if split else (K @ theta).ciphertexts
    _CHOOSER.record(split, time.perf_counter() - start)
    return out


def _split_product(K: torch.Tensor, theta: EncryptedTensor) -> list:
    """``K @ theta`` with the first half of the rows computed by the helper process."""
    half = K.shape[0] // 2
    pk = theta.public_key
    if not _HELPER.usable():
        return (K @ theta).ciphertexts
    try:
        _HELPER.conn.send((format(int(pk.n), "x"), theta.to_bytes(), K[:half].numpy().copy()))
        mine = (K[half:] @ theta).ciphertexts
        reply = _HELPER.conn.recv()
    except (OSError, EOFError):
        _HELPER.failed = True
        _HELPER.close()
        return (K @ theta).ciphertexts
    if reply is None:
        return (K @ theta).ciphertexts
    return EncryptedTensor.from_bytes(reply, public_key=pk).ciphertexts + mine


# -- client ---------------------------------------------------------------------------------------
class HEMClientExchange(ClientExchange):
    """Client side of HEM: pairwise masks, blinded refreshes, masked uploads. Holds no private key.

    Args:
        allow_insecure: accept a Paillier key below 2048 bits from the server (tests only).
        step_bits, value_bits, base_scale: the public fixed-point parameters (see module constants).
    """

    def __init__(
        self,
        *,
        allow_insecure: bool = False,
        step_bits: int = STEP_BITS,
        value_bits: int = VALUE_BITS,
        base_scale: int = BASE_SCALE,
    ) -> None:
        super().__init__()
        self.allow_insecure = allow_insecure
        self.step_bits, self.value_bits, self.base_scale = step_bits, value_bits, base_scale
        self.public_key: PublicKey | None = None
        self.masker: PairwiseMasker | None = None
        #: optional synchronous path to the key holder (request bytes -> reply bytes) for
        #: :meth:`HEMClient.fit_encrypted` called directly; the protocol itself sends refresh
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
    def refresher(self) -> RefreshClient:
        """Blinds and unblinds this client's refreshes (through :attr:`channel` when one is set)."""
        if self.public_key is None:
            raise ProtocolError("no key yet: the server has not run the HEM set-up")
        if self._refresher is None or self._refresher.channel is not self.channel:
            self._refresher = RefreshClient(self.channel, self.public_key, value_bits=self.value_bits)
            if not self._refresher.can_refresh(self.base_scale + self.step_bits):
                raise ProtocolError(f"a {self.public_key.bits}-bit key leaves no room for one encrypted step")
        return self._refresher

    def _key(self) -> PublicKey:
        if self.public_key is None or self.masker is None:
            raise ProtocolError("the server has not run the HEM set-up (keys and pairwise seeds)")
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
        """``Enc(n * theta + mask)`` and ``Enc(n + mask')``, re-randomised, as wire bytes."""
        pk = self._key()
        label = mask_label("update", participants, round=server_round, attempt=attempt)
        mask = self.masker.mask(label, participants, theta.numel() + 1, int(pk.n))
        cts = [pk.raw_add_plain(pk.raw_mul(c, num_examples), m) for c, m in zip(theta.ciphertexts, mask)]
        cts = pk.rerandomize_ints(cts)
        count = [pk.encrypt_int(num_examples + mask[-1])]
        meta = {
            "format": _FORMAT, "fingerprint": pk.fingerprint, "key_bits": pk.bits, "scale": theta.scale,
            "round": server_round, "attempt": attempt, "participants": sorted(participants),
        }
        return wire.encode(_UPDATE_KIND, meta, {"weights": cts_to_array(cts, pk), "count": cts_to_array(count, pk)})

    def write_statistics(self, stats: Mapping[str, np.ndarray]) -> bytes:
        pk = self._key()
        vector = np.concatenate([np.asarray(stats[k], dtype=np.float64).reshape(-1) for k in ("count", "sum", "sumsq")])
        participants = [self.masker.cid] + self.masker.peers
        mask = self.masker.mask(mask_label("stats", participants), participants, len(vector), int(pk.n))
        ints = quantize(torch.from_numpy(vector), _STAT_SCALE)
        cts = pk.encrypt_ints([(v + m) % pk.n for v, m in zip(ints, mask)])
        meta = {
            "format": _FORMAT, "fingerprint": pk.fingerprint, "key_bits": pk.bits, "scale": _STAT_SCALE,
            "participants": sorted(participants),
        }
        return wire.encode(_STATS_KIND, meta, {"values": cts_to_array(cts, pk)})

    def read_statistics(self, payload: bytes) -> dict[str, np.ndarray]:
        return _read_plain_stats(payload)


@dataclass
class _Continuation:
    """Where a HEM client is in one fit while it waits for a refresh: enough to carry on.

    Kept by the client between its ``refresh_req`` reply and the server's ``refresh_ins`` (in
    memory, or in a site's own state as :func:`_encode_continuation` bytes). ``pending`` holds the
    target scale and the secret blinding masks of the refresh in flight; ``refreshes`` and
    ``seconds`` are the site's own record of this fit (never sent: the server counts the refreshes
    it serves itself, and a site's seconds reveal its number of steps).
    """

    server_round: int
    attempt: int
    participants: list[str]
    proximal_mu: float
    base: int
    theta: EncryptedTensor
    anchor0: EncryptedTensor | None = None
    anchor: EncryptedTensor | None = None
    step: int = 0
    seq: int = 0
    refreshes: int = 0
    pending: tuple[int, list[int]] | None = None
    seconds: dict = field(default_factory=dict)


_CONTINUATION_KIND = "torchhefl.hem.continuation"


def _encode_continuation(c: _Continuation) -> bytes:
    """A continuation as wire bytes (for the site's own state only: it holds secret masks)."""
    meta = {
        "round": c.server_round, "attempt": c.attempt, "participants": list(c.participants),
        "proximal_mu": c.proximal_mu, "base": c.base, "step": c.step, "seq": c.seq, "refreshes": c.refreshes,
        "pending": None if c.pending is None else [c.pending[0], [format(m, "x") for m in c.pending[1]]],
        "seconds": dict(c.seconds),
    }
    arrays = {"theta": np.frombuffer(c.theta.to_bytes(), dtype=np.uint8)}
    if c.anchor0 is not None:
        arrays["anchor0"] = np.frombuffer(c.anchor0.to_bytes(), dtype=np.uint8)
        arrays["anchor"] = np.frombuffer(c.anchor.to_bytes(), dtype=np.uint8)
    return wire.encode(_CONTINUATION_KIND, meta, arrays)


def _decode_continuation(blob: bytes, pk: PublicKey) -> _Continuation:
    msg = wire.decode(blob, kind=_CONTINUATION_KIND)
    m = msg.meta

    def tensor(name):
        return EncryptedTensor.from_bytes(msg.arrays[name].tobytes(), public_key=pk) if name in msg.arrays else None

    pending = m.get("pending")
    try:
        return _Continuation(
            server_round=int(m["round"]), attempt=int(m["attempt"]), participants=list(m["participants"]),
            proximal_mu=float(m["proximal_mu"]), base=int(m["base"]), theta=tensor("theta"),
            anchor0=tensor("anchor0"), anchor=tensor("anchor"), step=int(m["step"]), seq=int(m["seq"]),
            refreshes=int(m["refreshes"]),
            pending=None if pending is None else (int(pending[0]), [int(h, 16) for h in pending[1]]),
            seconds={str(k): float(v) for k, v in m["seconds"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MalformedMessageError(f"the site's saved training state is unreadable: {e}") from None


class HEMClient(Client):
    """A site in HEM mode: trains the encrypted global weights it is sent, never seeing them.

    Takes :class:`~torchhefl.federated.client.Client`'s arguments with a
    :class:`HEMClientExchange`; ``clip_norm`` must be ``None`` (ciphertexts cannot be clipped).

    A fit needs refreshes from the key-holding server. The client answers ``fit_ins`` (and each
    ``refresh_ins``) with a ``refresh_req`` carrying a blinded refresh request whenever it needs
    one, keeps where it is in local training, and carries on when the server's ``refresh_ins``
    arrives; the last answer is the ``fit_res``. Only the server sends requests, so the same
    protocol runs in process and over a network that lets clients only answer.
    """

    REQUEST_KINDS = Client.REQUEST_KINDS + ("hem_keys_ins", "hem_peers_ins", "refresh_ins")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.exchange, HEMClientExchange):
            raise ConfigError("HEMClient needs a HEMClientExchange")
        if self.clip_norm is not None:
            raise ConfigError(CLIP_NORM_MESSAGE)
        if self.privacy is not None:
            raise ConfigError("differential privacy needs plaintext gradients; HEM clients train on ciphertexts")
        self._continuation: _Continuation | None = None
        self._saved_continuation = b""
        self._x25519: bytes | None = None

    # -- a site's own state, for deployments that rebuild the client per message -------------------
    def site_state(self) -> dict[str, bytes]:
        """What this client must keep across messages, as bytes: its X25519 private key and the
        continuation of a fit waiting for a refresh. Secret: for the site's own storage only."""
        masker = self.exchange.masker
        x25519 = masker.private_bytes() if masker is not None else (self._x25519 or b"")
        continuation = _encode_continuation(self._continuation) if self._continuation is not None else b""
        return {"x25519": x25519, "continuation": continuation}

    def restore_site_state(self, state: Mapping[str, bytes]) -> None:
        """Take back :meth:`site_state` (before the set-up requests are replayed)."""
        x25519 = bytes(state.get("x25519", b""))
        self._x25519 = x25519 or None
        self._saved_continuation = bytes(state.get("continuation", b""))
        self._continuation = None

    # -- set-up ---------------------------------------------------------------------------------
    def _on_hem_keys(self, msg) -> bytes:
        description = msg.meta.get("public_key")
        if not isinstance(description, dict):
            raise MalformedMessageError("hem_keys request without the server's public key")
        self.exchange.set_public_key(description)
        self.exchange.masker = PairwiseMasker(self.cid, self._x25519)
        return encode_request("hem_keys_res", {"cid": self.cid, "x25519": self.exchange.masker.public_bytes().hex()})

    def _on_hem_peers(self, msg) -> bytes:
        peers = msg.meta.get("peers")
        if self.exchange.masker is None:
            raise ProtocolError("pairwise keys relayed before this client made its own")
        if not isinstance(peers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in peers.items()):
            raise MalformedMessageError("hem_peers request needs a {cid: hex public key} map")
        try:
            keys = {cid: bytes.fromhex(v) for cid, v in peers.items()}
        except ValueError:
            raise MalformedMessageError("hem_peers request holds a public key that is not hexadecimal") from None
        self.exchange.masker.agree(keys)
        return encode_request("hem_peers_res", {"cid": self.cid})

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
        if self.standardizer is None:
            raise ProtocolError(f"client {self.cid} was asked to train before standardisation")
        exchange = self.exchange
        theta = exchange.read_encrypted(payload_of(msg), self.X.shape[1] + 1)
        mu = self._proximal_mu(config)
        anchor = theta if mu > 0 else None
        self._continuation = _Continuation(
            server_round, attempt, list(participants), mu, theta.scale, theta, anchor0=anchor, anchor=anchor
        )
        self._saved_continuation = b""
        return self._carry_on(self._continuation)

    def _on_refresh(self, msg) -> bytes:
        c = self._continuation
        if c is None and self._saved_continuation:
            c = _decode_continuation(self._saved_continuation, self.exchange._key())
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

    def _carry_on(self, c: _Continuation) -> bytes:
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
            return encode_request("refresh_req", meta, request)
        self._continuation, self._saved_continuation = None, b""
        with exchange.timer.phase("encrypt"):
            payload = exchange.write_masked_update(
                c.theta, self.num_examples, server_round=c.server_round, attempt=c.attempt, participants=c.participants
            )
        for phase, s in exchange.timer.take().items():
            c.seconds[phase] = c.seconds.get(phase, 0.0) + s
        meta = {"cid": self.cid, "round": c.server_round, "attempt": c.attempt}
        return self._fit_reply(meta, payload, c.seconds)

    def _advance(self, c: _Continuation, *, to_base: bool) -> bytes | None:
        """Run ``c``'s remaining local steps; stop at the first that needs a refresh and return its
        blinded request (``c.pending`` keeps the masks). With ``to_base``, end with a refresh to the
        common upload scale. ``None`` once training is done."""
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
                idx = batches[c.step]
                Xb, yb = add_bias_column(self.X[idx]).to(torch.float64), self.y[idx].to(torch.float64)
                theta_next = apply_step(
                    c.theta, Xb, yb, lr=self.lr, proximal_mu=c.proximal_mu, anchor=c.anchor,
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
                c.step += 1
        finally:
            torch.set_num_threads(threads)
        if to_base and c.theta.scale != ex.base_scale:  # every upload at the common public scale
            request, masks = refresher.begin(c.theta, ex.base_scale)
            c.pending = (ex.base_scale, masks)
            return request
        return None

    def fit_encrypted(self, theta: EncryptedTensor, server_round: int, *, proximal_mu: float = 0.0) -> EncryptedTensor:
        """Local SGD on the encrypted ``theta`` over this round's batches (those of plain mode).

        Refreshes through the exchange's synchronous :attr:`HEMClientExchange.channel` whenever the
        next step would leave no room for a blinding mask. Returns ``theta`` at whatever scale the
        last step left. (The protocol path, :meth:`handle`, runs the same steps with refreshes as
        separate messages.)
        """
        if self.standardizer is None:
            raise ProtocolError(f"client {self.cid} was asked to train before standardisation")
        if self.exchange.channel is None:
            raise ProtocolError("fit_encrypted needs exchange.channel; the protocol path refreshes by message")
        anchor = theta if proximal_mu > 0 else None
        c = _Continuation(server_round, 0, [self.cid], proximal_mu, theta.scale, theta, anchor0=anchor, anchor=anchor)
        refresher = self.exchange.refresher
        while (request := self._advance(c, to_base=False)) is not None:
            target, masks = c.pending
            c.theta = refresher.finish(self.exchange.channel(request), masks, c.theta.shape, c.theta.scale, target)
            c.pending, c.anchor = None, c.anchor0
        return c.theta


# -- server ---------------------------------------------------------------------------------------
class HEMServerExchange(ServerExchange):
    """Server side of HEM: holds the key pair and the plaintext global model; decrypts only sums.

    Args:
        private_key: the server's key pair.
        initial_state: the initial global state_dict (``weight`` of shape ``(1, d)``, ``bias``).
        base_scale, value_bits: public fixed-point parameters (see module constants).

    Attributes:
        refreshes: refresh requests served so far.
        decryptions: what the server decrypted, in order: ``(purpose, number of values)`` with
            purpose ``"statistics_sum"``, ``"update_sum"``, ``"count_sum"`` or ``"refresh"``.
    """

    needs_every_participant = True

    @property
    def follow_ups(self) -> dict[str, FollowUp]:
        """Clients ask for refreshes mid-fit (:meth:`refresh`); the round result counts them."""
        return {"refresh_req": FollowUp("refresh_ins", self.refresh, what="refresh request", counted_as="refreshes")}

    def __init__(
        self,
        private_key: PrivateKey,
        initial_state: Mapping[str, torch.Tensor],
        *,
        base_scale: int = BASE_SCALE,
        value_bits: int = VALUE_BITS,
    ) -> None:
        super().__init__()
        self._private_key = private_key
        self.public_key = private_key.public_key
        self.base_scale, self.value_bits = base_scale, value_bits
        self._layout = [(k, tuple(v.shape), v.dtype) for k, v in initial_state.items()]
        self.theta = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in initial_state.values()])
        self.refreshes = 0
        self.decryptions: list[tuple[str, int]] = []
        self._total_count: int | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, server) -> None:
        """Send the public key, collect the clients' X25519 keys and relay them to every client."""
        ids = list(server.transport.client_ids)
        request = encode_request("hem_keys_ins", {"public_key": self.public_key.to_dict()})
        replies = server.broadcast(ids, request, "hem_keys_res")
        if len(replies) < len(ids):
            missing = sorted(set(ids) - set(replies))
            raise ProtocolError(f"the pairwise key agreement needs every client; {', '.join(missing)} did not answer")
        peers = {}
        for cid, msg in replies.items():
            key = msg.meta.get("x25519")
            if msg.meta.get("cid") != cid or not isinstance(key, str):
                raise ProtocolError(f"client {cid} answered the key agreement with a malformed reply")
            peers[cid] = key
        acks = server.broadcast(ids, encode_request("hem_peers_ins", {"peers": peers}), "hem_peers_res")
        if len(acks) < len(ids):
            raise ProtocolError("the pairwise key agreement needs every client; some did not take the relayed keys")

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
            raise ProtocolError(f"{strategy!r} is not sample-weighted; HEM aggregates sample-weighted sums")
        if not payloads:
            raise ProtocolError("no client updates to aggregate")
        pk, d = self.public_key, self.theta.numel()
        label = None
        weight_sum = [1] * d
        count_sum = 1
        n2 = pk.nsquare
        with self.timer.phase("aggregate"):
            for blob in payloads:
                meta, weights, count = self._read_update(blob, d)
                this = (meta["round"], meta["attempt"], tuple(meta["participants"]))
                if label is None:
                    label = this
                elif this != label:
                    raise ProtocolError("client updates were masked for different rounds or participant sets")
                weight_sum = [a * b % n2 for a, b in zip(weight_sum, weights)]
                count_sum = count_sum * count % n2
        if len(label[2]) != len(payloads):
            raise ProtocolError(
                f"{len(payloads)} updates for {len(label[2])} participants: the masks cannot cancel"
            )
        if len(payloads) < 2:
            raise ProtocolError("only one client's update reached the server: its sum would be that client's update")
        with self.timer.phase("decrypt"):
            count_bound = _COUNT_BITS
            (total,) = self._decrypt_sum("count_sum", [count_sum], scale=0, bound_bits=count_bound)
            if total < 1:
                raise ProtocolError(f"the masked sample counts sum to {total}: a client broke the protocol")
            sums = self._decrypt_sum(
                "update_sum", weight_sum, scale=self.base_scale,
                bound_bits=self.base_scale + self.value_bits + count_bound,
            )
        self.theta = dequantize(sums, self.base_scale) / total

    def check_update(self, payload: bytes, *, server_round=None, attempt=None, participants=None) -> bytes:
        """Check one masked update before aggregation: key, format, ciphertext ranges, and masks made
        for this round, attempt and participant set (else the masks could not cancel)."""
        meta, _, _ = self._read_update(payload, self.theta.numel())
        if server_round is not None and (meta["round"], meta["attempt"]) != (server_round, attempt):
            raise MalformedMessageError(f"masked update for round {meta['round']} attempt {meta['attempt']}")
        if participants is not None and meta["participants"] != sorted(participants):
            raise MalformedMessageError("masked update for another participant set")
        return payload

    def restore_global(self, blob: bytes) -> None:
        """Replace the global weights with a checkpoint's (``global_checkpoint`` bytes)."""
        state, _ = decode_state(blob, expected=self.global_state())
        self.theta = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in state.values()])

    def _decrypt_sum(self, purpose: str, cts: list, *, scale: int, bound_bits: int) -> list[int]:
        tensor = EncryptedTensor.from_ciphertexts(self.public_key, cts, (len(cts),), scale=scale, bound_bits=bound_bits)
        try:
            values = tensor.decrypt_ints(self._private_key)
        except OverflowError as e:
            raise ProtocolError(f"the masked {purpose.replace('_', ' ')} does not decrypt to a valid sum: {e}") from None
        self.decryptions.append((purpose, len(values)))
        return values

    def _read_update(self, blob: bytes, d: int):
        pk = self.public_key
        msg = wire.decode(blob, kind=_UPDATE_KIND)
        meta = msg.meta
        check_fingerprint(meta, pk)
        if not (same_int(meta.get("format"), _FORMAT) and same_int(meta.get("scale"), self.base_scale)):
            raise MalformedMessageError(f"masked update of format {meta.get('format')!r} at scale {meta.get('scale')!r}")
        participants = meta.get("participants")
        if (
            not all(type(meta.get(k)) is int for k in ("round", "attempt"))
            or not isinstance(participants, list)
            or not all(isinstance(p, str) for p in participants)
        ):
            raise MalformedMessageError("masked update without its round, attempt and participants")
        if set(msg.arrays) != {"weights", "count"}:
            raise MalformedMessageError("a masked update holds exactly 'weights' and 'count'")
        return meta, array_to_cts(msg.arrays["weights"], pk, d), array_to_cts(msg.arrays["count"], pk, 1)[0]

    def check_statistics(self, payload: bytes) -> bytes:
        """One site's masked statistics: key, format, scale, a participant list, ciphertexts in range
        (the masks hide the values until all are summed)."""
        self._read_statistics(payload)
        return payload

    def _read_statistics(self, blob: bytes) -> tuple[list[str], list]:
        pk = self.public_key
        msg = wire.decode(blob, kind=_STATS_KIND)
        meta = msg.meta
        check_fingerprint(meta, pk)
        if not (same_int(meta.get("format"), _FORMAT) and same_int(meta.get("scale"), _STAT_SCALE)) or set(msg.arrays) != {"values"}:
            raise MalformedMessageError("masked statistics with an unexpected format, scale or arrays")
        participants = meta.get("participants")
        if not isinstance(participants, list) or not all(isinstance(p, str) for p in participants):
            raise MalformedMessageError("masked statistics without a participant list")
        arr = msg.arrays["values"]
        length = arr.shape[0] if arr.ndim == 2 else -1
        if not 3 <= length < 1 << 24 or length % 2 != 1:
            raise MalformedMessageError(f"masked statistics of {length} values cannot hold a count, sums and squares")
        return participants, array_to_cts(arr, pk, length)

    def sum_statistics(self, payloads: Sequence[bytes]) -> bytes:
        pk = self.public_key
        total = None
        participants = None
        for blob in payloads:
            theirs, cts = self._read_statistics(blob)
            participants = theirs if participants is None else participants
            if theirs != participants:
                raise ProtocolError("statistics were masked for different participant sets")
            if total is not None and len(cts) != len(total):
                raise MalformedMessageError(f"masked statistics of {len(cts)} and {len(total)} values")
            total = cts if total is None else [a * b % pk.nsquare for a, b in zip(total, cts)]
        if total is None:
            raise MalformedMessageError("no statistics to sum")
        if not isinstance(participants, list) or len(participants) != len(payloads):
            raise ProtocolError("statistics from fewer clients than were masked for: the masks cannot cancel")
        if len(payloads) < 2:
            raise ProtocolError("statistics of one client only: their sum would be that client's")
        with self.timer.phase("decrypt"):
            ints = self._decrypt_sum("statistics_sum", total, scale=_STAT_SCALE, bound_bits=pk.max_bits)
        try:
            vector = dequantize(ints, _STAT_SCALE).numpy()
        except OverflowError:
            raise ProtocolError("the masked statistics sum to values beyond the float range: a client broke the protocol") from None
        d = (len(vector) - 1) // 2
        self._total_count = int(round(float(vector[0])))
        return encode_state({"count": vector[:1], "sum": vector[1 : 1 + d], "sumsq": vector[1 + d :]})

    def read_statistics(self, payload: bytes) -> dict[str, np.ndarray]:
        return _read_plain_stats(payload)

    def global_state(self) -> OrderedDict:
        out, offset = OrderedDict(), 0
        for name, shape, dtype in self._layout:
            size = int(np.prod(shape)) if shape else 1
            out[name] = self.theta[offset : offset + size].reshape(shape).to(dtype).clone()
            offset += size
        return out

    # -- the refresh endpoint -------------------------------------------------------------------
    def refresh(self, request: bytes) -> bytes:
        """Serve one blinded refresh (bytes in, bytes out); see :mod:`torchhefl.federated.refresh`."""
        with self.timer.phase("refresh"):
            reply, seen = serve_refresh(request, self._private_key)
        self.refreshes += 1
        self.decryptions.append(("refresh", len(seen)))
        return reply


def _read_plain_stats(payload: bytes) -> dict[str, np.ndarray]:
    state, _ = decode_state(payload)
    if set(state) != {"count", "sum", "sumsq"}:
        raise MalformedMessageError(f"statistics payload holds {sorted(state)}, expected count, sum and sumsq")
    return {k: v.numpy() for k, v in state.items()}


# -- wiring -----------------------------------------------------------------------------------------
CLIP_NORM_MESSAGE = (
    "--clip-norm cannot be used with --key-holder server: clients train on encrypted weights and never "
    "see a plaintext gradient to clip (leave --clip-norm out, or pass --clip-norm none)"
)


def hem_parts(config: TrainConfig, initial: OrderedDict):
    """The mode's parts for :func:`torchhefl.federated.simulation.build`.

    ``config.extra`` may set ``hem_step_bits`` (default :data:`STEP_BITS`).
    """
    from torchhefl.federated.simulation import ModeParts

    if config.clip_norm is not None:
        raise ConfigError(CLIP_NORM_MESSAGE)
    if config.clients < 2:
        raise ConfigError("--key-holder server needs at least 2 clients: a sum over one client is its update")
    if config.loss != "taylor":
        raise ConfigError("--key-holder server trains on ciphertexts with the Taylor gradient (Eq 13): use --loss taylor")
    step_bits = config.extra.get("hem_step_bits", STEP_BITS)
    if isinstance(step_bits, bool) or not isinstance(step_bits, int) or not 8 <= step_bits <= 48:
        raise ConfigError(f"hem_step_bits must be an int in [8, 48], got {step_bits!r}")
    public_key, private_key = run_keypair(config)
    allow_insecure = bool(config.extra.get("allow_insecure_keys", False))
    server_exchange = HEMServerExchange(private_key, initial)
    client_exchanges = [
        HEMClientExchange(allow_insecure=allow_insecure, step_bits=step_bits) for _ in range(config.clients)
    ]

    return ModeParts(
        server_exchange=server_exchange,
        client_exchanges=client_exchanges,
        client_class=HEMClient,
        server_holds_test=True,
        extras={"public_key": public_key},
    )
