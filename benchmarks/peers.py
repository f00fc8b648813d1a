"""torchhefl side by side with the libraries a user would pick instead: ``python -m benchmarks.peers``.

One workload for every system, in one run: a LeNet-5-sized ``state_dict`` (61,706 parameters),
3 sites each encrypt theirs, the server computes the FedAvg weighted average by sample counts, one
site decrypts. Prints one JSON object per line: a setup line, one line per system, a "floor" line
and an end line with the load average. Every system's figures are the same:

* ``seconds`` = ``seconds_encrypt`` (the 3 sites together) + ``seconds_aggregate`` + ``seconds_decrypt``.
  Each phase includes its serialisation: a site's encryption ends in bytes, the server goes from
  the sites' bytes to the aggregate's bytes, and the decrypting site starts from those bytes.
  Key generation and per-key tables are set-up, not counted (the setup line times them).
  ``cpu_seconds``: the CPU time of the same phases (threads and forked workers included), less
  sensitive than wall-clock time to other jobs on the machine.
* ``bytes_per_param``: one site's upload (serialised ciphertexts) per parameter;
  ``bytes_per_param_aggregate`` the same for what the server sends back.
* ``max_abs_error``: against the weighted average computed in float64 from the same state dicts.
* ``seconds_vs_torchhefl``, ``bytes_vs_torchhefl``: ratios to the ``torchhefl`` row of this run.

``torchhefl_precomputed`` computes every random factor before the round (the sites' with
``CoinKey.precompute``, the decrypting site's inverse of the aggregate's with
``CoinKey.precompute_strip``, from the nonces the sites drew ahead): its ``seconds`` is the online
round, and ``seconds_precompute`` / ``seconds_total`` say what the round cost in all.
``torchhefl_precomputed_1e-6`` does the same in a narrower encoding (``packing.precision``:
resolution 2^-20, ``|v| < 4``, a public weight cap; 62 slots per ciphertext instead of 33).

TenSEAL runs twice: one CKKSVector per state-dict entry, as NVFlare's HE filters do, and the
whole state dict as one vector (CKKS's fewest ciphertexts, its best case on the wire). The floor
is 2 modular multiplications mod n^2 (measured with gmpy2 in the run) per packed ciphertext the
sites upload: about what encryption and aggregation would cost with every random factor
precomputed.

The per-value Paillier libraries (FATE's ``rust_paillier``, ``phe``) would take hours on every
value, so they run on a random sample of ``--sample`` values (the same for both) and their
seconds and bytes are extrapolated to the whole state dict; their rows say so
(``estimated_from_sample_values``). The peers are optional (``pip install 'torchhefl[bench]'``);
one that is not installed gets a ``{"peer": ..., "skipped": ...}`` line instead of figures.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import random
import resource
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np
import torch
from torch import nn

from benchmarks.he import lenet5
from torchhefl.secure import InsecureKeyWarning, PrivateKey, PublicKey, SecureStateDict, generate_keypair
from torchhefl.secure import _parallel
from torchhefl.secure.encoding import STATE_DICT_FIXED_POINT, FixedPoint
from torchhefl.secure.packing import precision

__all__ = ["INSTALL_HINT", "PEERS", "Peer", "PeerContext", "Workload", "main", "make_workload", "prepare_keys", "run"]

INSTALL_HINT = "pip install 'torchhefl[bench]'"

#: NVFlare's HE defaults (its provisioning's HEBuilder writes this TenSEAL context for the sites and the server)
CKKS_POLY_MODULUS_DEGREE = 8192
CKKS_COEFF_MOD_BIT_SIZES = (60, 40, 40)
CKKS_SCALE_BITS = 40


# -- the workload ---------------------------------------------------------------------------------
@dataclass
class Workload:
    """The sites' state dicts, their sample counts and the plaintext weighted average (float64)."""

    states: list[OrderedDict[str, torch.Tensor]]
    weights: list[int]
    average: OrderedDict[str, torch.Tensor]

    @property
    def num_params(self) -> int:
        return sum(v.numel() for v in self.states[0].values())

    def flat(self) -> list[np.ndarray]:
        """Each site's values, flattened in state-dict order, as float64."""
        return [np.concatenate([v.reshape(-1).double().numpy() for v in s.values()]) for s in self.states]

    def flat_average(self) -> np.ndarray:
        return np.concatenate([v.reshape(-1).numpy() for v in self.average.values()])

    def max_error(self, out: Mapping[str, torch.Tensor | np.ndarray]) -> float:
        """Largest ``|out - average|`` over every value."""
        err = 0.0
        for name, ref in self.average.items():
            got = torch.as_tensor(out[name]).to(torch.float64).reshape(ref.shape)
            err = max(err, float((got - ref).abs().max()))
        return err


def make_workload(model: Callable[[], nn.Module] = lenet5, *, sites: int = 3, seed: int = 0) -> Workload:
    """``sites`` freshly initialised copies of ``model()`` (seeded), weighted 100, 137, 174, ..."""
    torch.manual_seed(seed)
    states = [OrderedDict((k, v.detach().clone()) for k, v in model().state_dict().items()) for _ in range(sites)]
    weights = [100 + 37 * i for i in range(sites)]
    total = sum(weights)
    average = OrderedDict(
        (k, sum(w * s[k].to(torch.float64) for w, s in zip(weights, states)) / total) for k in states[0]
    )
    return Workload(states, weights, average)


@dataclass
class PeerContext:
    """What every system shares: the workload, torchhefl's key pair (generated once) and the sample size."""

    workload: Workload
    public_key: PublicKey
    private_key: PrivateKey
    sample: int = 32
    seed: int = 0

    @property
    def bits(self) -> int:
        return self.public_key.bits

    def sample_indices(self) -> list[int]:
        """The values the per-value libraries encrypt (the same ones for each)."""
        n = self.workload.num_params
        return sorted(random.Random(self.seed).sample(range(n), min(self.sample, n)))


def _cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished children (forked workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class _Phases:
    """Wall-clock seconds of each named phase, and the CPU seconds of all of them together."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu = 0.0

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        w0, c0 = time.perf_counter(), _cpu_seconds()
        yield
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w0
        self.cpu += _cpu_seconds() - c0


def _row(peer: str, system: str, ctx: PeerContext, phases: _Phases, bytes_up: float, bytes_down: float,
         err: float, *, scale: float = 1.0, **extra) -> dict:
    """One system's figures; ``scale`` extrapolates the seconds of a sample to the whole state dict."""
    n = ctx.workload.num_params
    t = {k: phases.wall.get(k, 0.0) * scale for k in ("encrypt", "aggregate", "decrypt")}
    return {
        "peer": peer,
        "system": system,
        "params": n,
        "sites": len(ctx.workload.states),
        "seconds": round(sum(t.values()), 4),
        "seconds_encrypt": round(t["encrypt"], 4),
        "seconds_aggregate": round(t["aggregate"], 4),
        "seconds_decrypt": round(t["decrypt"], 4),
        "cpu_seconds": round(phases.cpu * scale, 4),
        "bytes_per_param": round(bytes_up / n, 3),
        "bytes_per_param_aggregate": round(bytes_down / n, 3),
        "max_abs_error": err,
        **extra,
    }


# -- torchhefl ------------------------------------------------------------------------------------
def _torchhefl(ctx: PeerContext, peer: str, system: str, coins, precision: FixedPoint = STATE_DICT_FIXED_POINT) -> dict:
    """The README's first example: sites encrypt with their count as weight, the server sums, a site decrypts."""
    phase = _Phases()
    uploads, broadcast, received, average = _torchhefl_round(ctx, phase, coins, precision)
    return _row(peer, system, ctx, phase, len(uploads[0]), len(broadcast), ctx.workload.max_error(average),
                ciphertexts_per_site=received[0].num_ciphertexts)


def _torchhefl_round(ctx: PeerContext, phase: _Phases, coins, precision: FixedPoint = STATE_DICT_FIXED_POINT):
    """One round of ``ctx.workload``, timed into ``phase``: ``(uploads, broadcast, received, average)``,
    the sites' bytes, the aggregate's bytes, the server's parsed uploads and the decrypted average."""
    pk, sk, wl = ctx.public_key, ctx.private_key, ctx.workload
    cap = None if precision == STATE_DICT_FIXED_POINT else precision.max_total_weight // len(wl.states)
    with phase("encrypt"):
        uploads = [
            SecureStateDict.encrypt(s, pk, weight=n, weight_bound=cap, coins=coins, precision=precision).to_bytes()
            for s, n in zip(wl.states, wl.weights)
        ]
    with phase("aggregate"):
        received = [SecureStateDict.from_bytes(b, public_key=pk, precision=precision) for b in uploads]
        broadcast = SecureStateDict.weighted_average(received).to_bytes()
    with phase("decrypt"):
        average = SecureStateDict.from_bytes(broadcast, public_key=pk, precision=precision).decrypt(sk)
    return uploads, broadcast, received, average


def bench_torchhefl(ctx: PeerContext) -> dict:
    return _torchhefl(ctx, "torchhefl", f"torchhefl SecureStateDict, packed {ctx.bits}-bit Paillier (default: OS randomness)",
                      coins=None)


def bench_torchhefl_coins(ctx: PeerContext) -> dict:
    return _torchhefl(ctx, "torchhefl_coins",
                      f"torchhefl SecureStateDict, packed {ctx.bits}-bit Paillier, coins=private_key.coins()",
                      coins=ctx.private_key.coins())


NARROW = precision(resolution=1e-6, max_abs=4, max_total_weight=1023)
"""The narrow encoding of the ``*_1e-6`` rows: resolution 2^-20 (rounding errs by at most 4.8e-7),
``|v| < 4``, a public cap of 341 on each of the 3 sites' weights: 33-bit slots, 62 per ciphertext."""


def bench_torchhefl_precomputed(ctx: PeerContext, precision: FixedPoint = STATE_DICT_FIXED_POINT,
                                peer: str = "torchhefl_precomputed") -> dict:
    """The coins row with every random factor computed before the round (``CoinKey.precompute``):
    each site's encryption factors, and the decrypting site's inverse of the aggregate's total
    factor (``CoinKey.precompute_strip``, from the sites' nonces, known ahead). ``seconds`` is the
    online round; ``seconds_total`` adds ``seconds_precompute``."""
    pk, sk, wl = ctx.public_key, ctx.private_key, ctx.workload
    coins = sk.coins()
    count = SecureStateDict.num_ciphertexts_for(wl.states[0], pk, precision)
    pre = _Phases()
    with pre("precompute"):
        nonces = coins.precompute(count, batches=len(wl.states))
        coins.precompute_strip([(nonce, 1) for nonce in nonces], count)
    slots = f"{precision.slot_bits}-bit slots"
    row = _torchhefl(ctx, peer, f"torchhefl SecureStateDict, packed {ctx.bits}-bit Paillier ({slots}), coins precomputed "
                     "before the round", coins=coins, precision=precision)
    if coins.pooled(count):
        raise RuntimeError("the precomputed coins were not used")
    row["seconds_precompute"] = round(pre.wall["precompute"], 4)
    row["seconds_total"] = round(row["seconds"] + row["seconds_precompute"], 4)
    row["cpu_seconds_total"] = round(row["cpu_seconds"] + pre.cpu, 4)
    row["resolution_bits"] = precision.scale_bits
    return row


def bench_torchhefl_narrow(ctx: PeerContext) -> dict:
    """As ``torchhefl_precomputed``, in the :data:`NARROW` encoding (resolution 2^-20 instead of 2^-24)."""
    return bench_torchhefl_precomputed(ctx, NARROW, "torchhefl_precomputed_1e-6")


# -- TenSEAL CKKS, as NVFlare's HE filters use it --------------------------------------------------
def _tenseal_contexts():
    """NVFlare's HEBuilder context: symmetric CKKS with relinearisation keys; the sites' and the server's copies."""
    import tenseal as ts

    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=CKKS_POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=list(CKKS_COEFF_MOD_BIT_SIZES),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.generate_relin_keys()
    context.global_scale = 2**CKKS_SCALE_BITS
    site = ts.context_from(context.serialize(save_public_key=True, save_secret_key=True,
                                             save_galois_keys=False, save_relin_keys=True))
    server = ts.context_from(context.serialize(save_public_key=False, save_secret_key=False,
                                               save_galois_keys=False, save_relin_keys=True))
    return site, server


def _tenseal(ctx: PeerContext, peer: str, system: str, pieces: Callable[[OrderedDict], OrderedDict]) -> dict:
    """NVFlare's HEModelEncryptor / HEInTimeAccumulateWeightedAggregator / HEModelDecryptor.

    Each site multiplies its values by its sample count and encrypts each of ``pieces(state)`` as
    one CKKSVector; the server (whose context has no secret key) sums them and multiplies by
    1 / total; a site decrypts.
    """
    wl = ctx.workload
    phase = _Phases()
    plain, uploads, broadcast, out = _tenseal_round(wl, *_tenseal_contexts(), pieces, phase)
    flat = np.concatenate(list(out.values()))
    err = float(np.abs(flat - wl.flat_average()).max())
    return _row(peer, system, ctx, phase, sum(map(len, uploads[0].values())), sum(map(len, broadcast.values())), err,
                ciphertexts_per_site=ckks_ciphertexts(plain[0]), version=importlib.metadata.version("tenseal"))


def ckks_ciphertexts(pieces: Mapping[str, np.ndarray]) -> int:
    """How many CKKS ciphertexts the CKKSVectors of ``pieces`` take (one per ``degree / 2`` values of each)."""
    return sum(-(-len(v) // (CKKS_POLY_MODULUS_DEGREE // 2)) for v in pieces.values())


def _tenseal_round(wl: Workload, site_ctx, server_ctx, pieces: Callable[[OrderedDict], OrderedDict], phase: _Phases):
    """One CKKS round of ``wl`` with the contexts of :func:`_tenseal_contexts`, timed into ``phase``:
    ``(plain, uploads, broadcast, out)``, the sites' vectors, their serialised CKKSVectors, the
    aggregate's and the decrypted average, all keyed by ``pieces``' names."""
    import tenseal as ts

    plain = [pieces(OrderedDict((k, v.reshape(-1).double().numpy()) for k, v in s.items())) for s in wl.states]
    with phase("encrypt"):
        uploads = [
            OrderedDict((k, ts.ckks_vector(site_ctx, v * float(n)).serialize()) for k, v in s.items())
            for s, n in zip(plain, wl.weights)
        ]
    with phase("aggregate"):
        inv_total = 1.0 / sum(wl.weights)
        broadcast = OrderedDict()
        for k in uploads[0]:
            acc = None
            for up in uploads:
                v = ts.ckks_vector_from(server_ctx, up[k])
                acc = v if acc is None else acc + v
            broadcast[k] = (acc * inv_total).serialize()
    with phase("decrypt"):
        out = OrderedDict((k, np.array(ts.ckks_vector_from(site_ctx, b).decrypt())) for k, b in broadcast.items())
    return plain, uploads, broadcast, out


_CKKS = (f"TenSEAL CKKS, NVFlare's defaults (poly modulus {CKKS_POLY_MODULUS_DEGREE}, coeff mod "
         f"{list(CKKS_COEFF_MOD_BIT_SIZES)}, scale 2^{CKKS_SCALE_BITS})")


def bench_tenseal_ckks(ctx: PeerContext) -> dict:
    """As NVFlare's filters do: one CKKSVector per state-dict entry."""
    return _tenseal(ctx, "tenseal_ckks", f"{_CKKS}, one CKKSVector per entry, as NVFlare's HE filters", lambda s: s)


def bench_tenseal_ckks_flat(ctx: PeerContext) -> dict:
    """CKKS's best case on the wire: the whole state dict as one CKKSVector (fewest ciphertexts)."""
    return _tenseal(ctx, "tenseal_ckks_flat", f"{_CKKS}, the whole state dict as one CKKSVector",
                    lambda s: OrderedDict(all=np.concatenate(list(s.values()))))


# -- per-value Paillier: FATE's rust_paillier and phe -----------------------------------------------
def _sample_error(ctx: PeerContext, idx: Sequence[int], got: np.ndarray) -> float:
    return float(np.abs(got - ctx.workload.flat_average()[idx]).max())


def bench_rust_paillier(ctx: PeerContext) -> dict:
    """FATE's ``rust_paillier.par``: a Cipherblock of one ciphertext per value, on all the cores.

    Each site encrypts its sampled values as one block (``encrypt_f64``, FATE's fixed-point
    encoding) and sends the block's own serialisation (``__getstate__``); the server multiplies
    each block by the site's count and adds them; a site decrypts and divides by the total.
    """
    from rust_paillier import par as rp

    wl = ctx.workload
    threads = os.cpu_count() or 1
    rp.set_num_threads(threads)
    pk, sk = rp.keygen(ctx.bits)
    idx = ctx.sample_indices()
    values = [np.ascontiguousarray(f[idx]) for f in wl.flat()]

    def load(blob: bytes):
        block = rp.Cipherblock.__new__(rp.Cipherblock)
        block.__setstate__(blob)
        return block

    phase = _Phases()
    with phase("encrypt"):
        uploads = [pk.encrypt_f64(v).__getstate__() for v in values]
    with phase("aggregate"):
        acc = None
        for blob, n in zip(uploads, wl.weights):
            term = load(blob).mul_plaintext_scalar_i64(n)
            acc = term if acc is None else acc.add_cipherblock(term)
        broadcast = acc.__getstate__()
    with phase("decrypt"):
        got = sk.decrypt_f64(load(broadcast)) / sum(wl.weights)

    # a block holds a header (the public key) and one ciphertext per value: both from two sizes
    one = len(pk.encrypt_f64(values[0][:1]).__getstate__())
    per_value = (len(uploads[0]) - one) / (len(idx) - 1)
    header = one - per_value
    per_value_down = (len(broadcast) - header) / len(idx)
    n = wl.num_params
    return _row(
        "rust_paillier", f"FATE's rust_paillier.par, {ctx.bits}-bit Paillier, one ciphertext per value, {threads} threads",
        ctx, phase, header + per_value * n, header + per_value_down * n, _sample_error(ctx, idx, got),
        scale=n / len(idx), estimated_from_sample_values=len(idx), threads=threads,
        version=importlib.metadata.version("rust_paillier"),
    )


def bench_phe(ctx: PeerContext) -> dict:
    """python-paillier: one ``EncryptedNumber`` per value, as a naive implementation would.

    Each site encrypts its floats (phe's own encoding); the server multiplies each by the site's
    count and adds them; a site decrypts and divides by the total. phe has no wire format of its
    own: the bytes here are a compact one (the ciphertext in ``2 * bits / 8`` bytes and a 2-byte
    exponent); its documented JSON of decimal strings is about 2.4 times larger.
    """
    from phe import paillier

    wl = ctx.workload
    ppk, psk = ctx.public_key.phe, ctx.private_key.phe
    width = (ppk.nsquare.bit_length() + 7) // 8
    idx = ctx.sample_indices()
    values = [[float(v) for v in f[idx]] for f in wl.flat()]

    def dump(numbers) -> bytes:
        # a sum of fresh encryptions is random already: be_secure=False skips a second obfuscation
        return b"".join(e.ciphertext(be_secure=False).to_bytes(width, "big") + e.exponent.to_bytes(2, "big", signed=True)
                        for e in numbers)

    def load(blob: bytes) -> list:
        step = width + 2
        return [
            paillier.EncryptedNumber(ppk, int.from_bytes(blob[i : i + width], "big"),
                                     int.from_bytes(blob[i + width : i + step], "big", signed=True))
            for i in range(0, len(blob), step)
        ]

    phase = _Phases()
    with phase("encrypt"):
        uploads = [dump([ppk.encrypt(v) for v in site]) for site in values]
    with phase("aggregate"):
        sums = []
        for col in zip(*[load(b) for b in uploads]):
            acc = None
            for e, n in zip(col, wl.weights):
                acc = e * n if acc is None else acc + e * n
            sums.append(acc)
        broadcast = dump(sums)
    with phase("decrypt"):
        total = sum(wl.weights)
        got = np.array([psk.decrypt(e) / total for e in load(broadcast)])
    n = wl.num_params
    return _row(
        "phe", f"phe {importlib.metadata.version('phe')}, {ctx.bits}-bit Paillier, one EncryptedNumber per value",
        ctx, phase, len(uploads[0]) / len(idx) * n, len(broadcast) / len(idx) * n, _sample_error(ctx, idx, got),
        scale=n / len(idx), estimated_from_sample_values=len(idx),
    )


# -- the floor ------------------------------------------------------------------------------------
def modmul_seconds(modulus: int, *, count: int = 20_000, repeats: int = 3) -> float:
    """Seconds per ``a * b % modulus`` with gmpy2 on one core (best of ``repeats`` runs of ``count``)."""
    rng = random.Random(modulus)
    m = gmpy2.mpz(modulus)
    a, b = gmpy2.mpz(rng.randrange(m)), gmpy2.mpz(rng.randrange(m))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = a
        for _ in range(count):
            x = x * b % m
        best = min(best, time.perf_counter() - t0)
    return best / count


def floor_row(ctx: PeerContext, ciphertexts_per_site: int) -> dict:
    """2 modular multiplications mod n^2 per packed ciphertext a site uploads (encrypt, add into the sum)."""
    t = modmul_seconds(int(ctx.public_key.nsquare))
    count = ciphertexts_per_site * len(ctx.workload.states)
    return {
        "peer": "floor",
        "system": f"2 modular multiplications ({2 * ctx.bits}-bit, gmpy2) per packed ciphertext uploaded, one core",
        "params": ctx.workload.num_params,
        "seconds": round(2 * t * count, 4),
        "modmul_seconds": t,
        "packed_ciphertexts": count,
    }


# -- the registry and the run ----------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """A system to measure: the function that runs the workload, and the package it needs (if optional)."""

    run: Callable[[PeerContext], dict]
    requires: str | None = None


PEERS: dict[str, Peer] = {
    "torchhefl": Peer(bench_torchhefl),
    "torchhefl_coins": Peer(bench_torchhefl_coins),
    "torchhefl_precomputed": Peer(bench_torchhefl_precomputed),
    "torchhefl_precomputed_1e-6": Peer(bench_torchhefl_narrow),
    "tenseal_ckks": Peer(bench_tenseal_ckks, requires="tenseal"),
    "tenseal_ckks_flat": Peer(bench_tenseal_ckks_flat, requires="tenseal"),
    "rust_paillier": Peer(bench_rust_paillier, requires="rust_paillier"),
    "phe": Peer(bench_phe),
}
BASELINE = "torchhefl"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what native code prints to stdout (TenSEAL's warnings) to stderr: stdout is JSON lines."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def run(ctx: PeerContext, names: Sequence[str] | None = None) -> Iterator[dict]:
    """One row per system in ``names`` (default all; the baseline always runs first), then the floor.

    A system whose package is missing yields ``{"peer": name, "skipped": ...}``.
    """
    names = list(PEERS) if names is None else list(names)
    order = [BASELINE] + [n for n in names if n != BASELINE]
    base = None
    for name in order:
        peer = PEERS[name]
        if peer.requires is not None and not _installed(peer.requires):
            yield {"peer": name, "skipped": f"not installed: {INSTALL_HINT}"}
            continue
        with _stdout_to_stderr():
            row = peer.run(ctx)
        if base is None:
            base = row
        row["seconds_vs_torchhefl"] = round(row["seconds"] / base["seconds"], 2)
        row["bytes_vs_torchhefl"] = round(row["bytes_per_param"] / base["bytes_per_param"], 2)
        yield row
    floor = floor_row(ctx, base["ciphertexts_per_site"])
    floor["seconds_vs_torchhefl"] = round(floor["seconds"] / base["seconds"], 3)
    yield floor


def prepare_keys(bits: int, workload: Workload) -> tuple[PublicKey, PrivateKey]:
    """A key pair and its tables, built outside the timed phases (once per key pair in a real run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        pk, sk = generate_keypair(bits, allow_insecure=bits < 2048)
    pk.precompute()  # the DJN randomness table
    # the coin key's fixed-base table, sized (as in a round) for the ciphertexts a site encrypts
    SecureStateDict.encrypt(workload.states[0], pk, coins=sk.coins())
    return pk, sk


def print_rows(rows: Iterable[dict], load_before: float) -> None:
    """Each row as a JSON line as it comes, then the end line with the load average before and after."""
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"peer": "end", "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(PEERS),
                        help=f"run only this system (repeatable; {BASELINE} always runs, as the baseline)")
    parser.add_argument("--bits", type=int, default=2048, help="Paillier key size in bits (default 2048)")
    parser.add_argument("--sample", type=int, default=32,
                        help="values the per-value Paillier libraries encrypt, extrapolated to all (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.sample < 2:
        parser.error("--sample must be at least 2")
    torch.set_num_threads(1)  # the HE work has the cores; BLAS threads would only contend with it
    load_before = os.getloadavg()[0]
    workload = make_workload(seed=args.seed)
    t0 = time.perf_counter()
    pk, sk = prepare_keys(args.bits, workload)
    print(json.dumps({
        "peer": "setup", "key_bits": args.bits, "params": workload.num_params, "sites": len(workload.states),
        "weights": workload.weights, "cores": os.cpu_count(),
        "workers": _parallel.num_workers(), "load_average": round(load_before, 2),
        "seconds_keygen_and_tables": round(time.perf_counter() - t0, 3),
    }), flush=True)
    ctx = PeerContext(workload, pk, sk, sample=args.sample, seed=args.seed)
    print_rows(run(ctx, args.only), load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
