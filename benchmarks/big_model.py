"""A FedAvg round of a ResNet-18-sized state_dict in bounded memory: ``python -m benchmarks.big_model``.

The workload of :mod:`benchmarks.peers` on a big model: a ResNet-18 ``state_dict`` (11,689,512
parameters, 11,699,132 values with the batch-norm buffers; built here, without torchvision), 3
sites weighted 100, 137, 174, each encrypts its own with ``coins=private_key.coins()``, the server
computes the weighted average from the sites' bytes, one site decrypts; 2048-bit Paillier.

``SecureStateDict`` encrypts a whole mapping at once, so the bench streams the round by chunk: the
state dict is cut into chunks of at most ``--chunk-values`` values (whole tensors grouped in order,
a bigger tensor split by rows), and each chunk goes through encrypt x3 -> aggregate -> decrypt
before the next; the decrypted chunk is written into a preallocated output state dict. No more
than one chunk's ciphertexts (and Python integers) exist at any time. TenSEAL CKKS (NVFlare's
contexts, as in :mod:`benchmarks.peers`) does the same work, one CKKSVector per chunk.

Prints one JSON object per line: a setup line, one line per system, an end line with the load
average. The figures are those of :func:`benchmarks.peers._row` summed over the chunks (the bytes
include every chunk's header), plus:

* ``peak_rss_mib_self``: ``getrusage(RUSAGE_SELF).ru_maxrss`` after the system's round, the peak of
  this process so far (so a later row's figure covers the rows before it; the setup line gives it
  before any round). ``peak_rss_mib_children``: ``RUSAGE_CHILDREN``, the largest forked worker
  (torchhefl forks workers for bulk multiplications, see ``torchhefl/secure/_parallel.py``).
* ``chunks``, ``chunk_values``: how the round was cut.

A progress bar over the chunks goes to stderr. TenSEAL is optional (``pip install 'torchhefl[bench]'``);
without it its line is ``{"peer": ..., "skipped": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks.he import lenet5
from benchmarks.peers import (
    _CKKS,
    INSTALL_HINT,
    PeerContext,
    Workload,
    _installed,
    _Phases,
    _row,
    _stdout_to_stderr,
    _tenseal_contexts,
    _tenseal_round,
    _torchhefl_round,
    ckks_ciphertexts,
    make_workload,
    prepare_keys,
    print_rows,
)
from torchhefl.secure import _parallel

__all__ = ["MODELS", "Piece", "main", "plan_chunks", "resnet18", "run"]

DEFAULT_CHUNK_VALUES = 1_000_000


# -- the model ------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet's two-convolution residual block, with torchvision's names (``conv1``, ``bn1``, ``downsample``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 (torchvision's layout and state-dict names): 11,689,512 parameters for 1000 classes."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        inplanes = 64
        for i, planes in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> nn.Module:
    return ResNet18()


MODELS: dict[str, Callable[[], nn.Module]] = {"resnet18": resnet18, "lenet5": lenet5}


# -- chunks ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """A state-dict entry (``index`` is ``...``) or rows ``index`` of it (a ``slice`` of dim 0)."""

    name: str
    index: slice | type(Ellipsis)
    numel: int

    @property
    def key(self) -> str:
        """The piece's name in a chunk's state dict: the entry's, with ``[a:b]`` for rows."""
        if self.index is Ellipsis:
            return self.name
        return f"{self.name}[{self.index.start}:{self.index.stop}]"


def plan_chunks(state: Mapping[str, torch.Tensor], max_values: int) -> list[list[Piece]]:
    """Cut ``state`` into chunks of at most ``max_values`` values, in state-dict order.

    Whole tensors are grouped while they fit; a tensor bigger than ``max_values`` is split by
    rows (dim 0) into pieces of as many rows as fit (at least one, so a single row bigger than
    ``max_values`` makes a chunk of its own).
    """
    if max_values < 1:
        raise ValueError("max_values must be at least 1")
    pieces: list[Piece] = []
    for name, t in state.items():
        n = t.numel()
        if n <= max_values or t.dim() == 0:
            pieces.append(Piece(name, Ellipsis, n))
            continue
        row = n // t.shape[0]
        step = max(1, max_values // row)
        pieces += [Piece(name, slice(a, min(a + step, t.shape[0])), (min(a + step, t.shape[0]) - a) * row)
                   for a in range(0, t.shape[0], step)]
    chunks: list[list[Piece]] = []
    size = 0
    for p in pieces:
        if not chunks or size + p.numel > max_values:
            chunks.append([])
            size = 0
        chunks[-1].append(p)
        size += p.numel
    return chunks


def chunk_workload(workload: Workload, chunk: Sequence[Piece]) -> Workload:
    """The part of ``workload`` in ``chunk``: each state dict (and the average) keyed by :attr:`Piece.key`."""

    def part(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((p.key, state[p.name][p.index].contiguous()) for p in chunk)

    return Workload([part(s) for s in workload.states], workload.weights, part(workload.average))


def _peak_rss_mib() -> tuple[float, float]:
    """Peak resident set size (MiB) of this process and of its largest finished child (``ru_maxrss``, KiB on Linux)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(me / 1024, 1), round(children / 1024, 1)


# -- one system, streamed by chunk ------------------------------------------------------------------
Round = Callable[[Workload, _Phases], tuple[int, int, int, Mapping[str, torch.Tensor | np.ndarray]]]
"""One chunk's round, timed into the phases: ``(bytes up per site, bytes down, ciphertexts per site, average)``
with the average keyed by :attr:`Piece.key`."""


def _streamed(ctx: PeerContext, chunks: Sequence[Sequence[Piece]], peer: str, system: str, round_: Round,
              *, progress: bool = True, **extra) -> dict:
    """Run ``round_`` on every chunk in turn, write each chunk's average into one preallocated
    state dict, and return the row of the whole round (errors against the float64 average)."""
    wl = ctx.workload
    out = OrderedDict((k, torch.empty_like(v)) for k, v in wl.states[0].items())
    phase = _Phases()
    up = down = cts = 0
    for chunk in tqdm(chunks, desc=peer, unit="chunk", file=sys.stderr, disable=not progress):
        b_up, b_down, n_ct, average = round_(chunk_workload(wl, chunk), phase)
        up, down, cts = up + b_up, down + b_down, cts + n_ct
        for p in chunk:
            target = out[p.name][p.index]
            target.copy_(torch.as_tensor(average[p.key]).reshape(target.shape))
        del average
    peak_self, peak_children = _peak_rss_mib()
    return _row(peer, system, ctx, phase, up, down, wl.max_error(out), ciphertexts_per_site=cts, chunks=len(chunks),
                chunk_values=max(sum(p.numel for p in c) for c in chunks),
                peak_rss_mib_self=peak_self, peak_rss_mib_children=peak_children, **extra)


def bench_torchhefl(ctx: PeerContext, chunks: Sequence[Sequence[Piece]], *, progress: bool = True) -> dict:
    """``SecureStateDict.encrypt(chunk, pk, weight=n, coins=sk.coins())`` x3, ``weighted_average``, ``decrypt``, per chunk."""
    coins = ctx.private_key.coins()

    def round_(sub: Workload, phase: _Phases):
        uploads, broadcast, received, average = _torchhefl_round(PeerContext(sub, ctx.public_key, ctx.private_key),
                                                                 phase, coins)
        return len(uploads[0]), len(broadcast), received[0].num_ciphertexts, average

    return _streamed(ctx, chunks, "torchhefl_coins",
                     f"torchhefl SecureStateDict, packed {ctx.bits}-bit Paillier, coins=private_key.coins(), by chunk",
                     round_, progress=progress, workers=_parallel.num_workers())


def bench_tenseal(ctx: PeerContext, chunks: Sequence[Sequence[Piece]], *, progress: bool = True) -> dict:
    """NVFlare's HE filters' arithmetic (see :func:`benchmarks.peers._tenseal`), one CKKSVector per chunk."""
    import importlib.metadata

    site_ctx, server_ctx = _tenseal_contexts()

    def flat(state: OrderedDict) -> OrderedDict:
        return OrderedDict(chunk=np.concatenate(list(state.values())))

    def round_(sub: Workload, phase: _Phases):
        plain, uploads, broadcast, out = _tenseal_round(sub, site_ctx, server_ctx, flat, phase)
        values = out["chunk"]
        average, pos = {}, 0
        for k, v in sub.states[0].items():
            average[k] = values[pos : pos + v.numel()]
            pos += v.numel()
        return (sum(map(len, uploads[0].values())), sum(map(len, broadcast.values())), ckks_ciphertexts(plain[0]),
                average)

    return _streamed(ctx, chunks, "tenseal_ckks_chunked", f"{_CKKS}, one CKKSVector per chunk", round_,
                     progress=progress, version=importlib.metadata.version("tenseal"))


# -- the run --------------------------------------------------------------------------------------
def run(ctx: PeerContext, chunks: Sequence[Sequence[Piece]], *, tenseal: bool = True,
        progress: bool = True) -> Iterator[dict]:
    """The torchhefl row, then (if ``tenseal``) TenSEAL's or its ``skipped`` line, with ratios to torchhefl."""
    with _stdout_to_stderr():
        base = bench_torchhefl(ctx, chunks, progress=progress)
    base["seconds_vs_torchhefl"] = base["bytes_vs_torchhefl"] = 1.0
    yield base
    if not tenseal:
        return
    if not _installed("tenseal"):
        yield {"peer": "tenseal_ckks_chunked", "skipped": f"not installed: {INSTALL_HINT}"}
        return
    with _stdout_to_stderr():
        row = bench_tenseal(ctx, chunks, progress=progress)
    row["seconds_vs_torchhefl"] = round(row["seconds"] / base["seconds"], 2)
    row["bytes_vs_torchhefl"] = round(row["bytes_per_param"] / base["bytes_per_param"], 2)
    yield row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.big_model", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet18", help="the state dict (default resnet18)")
    parser.add_argument("--bits", type=int, default=2048, help="Paillier key size in bits (default 2048)")
    parser.add_argument("--chunk-values", type=int, default=DEFAULT_CHUNK_VALUES,
                        help=f"at most this many values per chunk (default {DEFAULT_CHUNK_VALUES:,})")
    parser.add_argument("--no-tenseal", action="store_true", help="run torchhefl only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.chunk_values < 1:
        parser.error("--chunk-values must be at least 1")
    torch.set_num_threads(1)  # the HE work has the cores; BLAS threads would only contend with it
    load_before = os.getloadavg()[0]
    workload = make_workload(MODELS[args.model], seed=args.seed)
    parameters = sum(p.numel() for p in MODELS[args.model]().parameters())
    chunks = plan_chunks(workload.states[0], args.chunk_values)
    t0 = time.perf_counter()
    # the key pair and its tables, sized as in the round: for one chunk's ciphertexts
    pk, sk = prepare_keys(args.bits, chunk_workload(workload, chunks[0]))
    peak_self, peak_children = _peak_rss_mib()
    print(json.dumps({
        "peer": "setup", "model": args.model, "key_bits": args.bits, "params": workload.num_params,
        "parameters": parameters, "sites": len(workload.states), "weights": workload.weights,
        "chunks": len(chunks), "chunk_values": args.chunk_values, "cores": os.cpu_count(),
        "workers": _parallel.num_workers(), "load_average": round(load_before, 2),
        "seconds_keygen_and_tables": round(time.perf_counter() - t0, 3),
        "peak_rss_mib_self": peak_self, "peak_rss_mib_children": peak_children,
    }), flush=True)
    ctx = PeerContext(workload, pk, sk)
    print_rows(run(ctx, chunks, tenseal=not args.no_tenseal, progress=not args.no_progress), load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
