"""Checkpoints of a federated run, written after every round so a stopped server can resume.

A checkpoint is one file in the torchhefl wire format (no pickle), replaced atomically each round
with mode 0600 (:func:`torchhefl.secure.files.write_private_file`: a fresh temporary file beside
it, fsync, ``os.replace``; a symlink at either name is never followed): a crash mid-write leaves
the previous round's checkpoint intact. It holds

* the round just completed and the run's configuration;
* the global model as the server holds it: a plaintext state_dict in plain mode and with the
  server-held key, the encrypted aggregate (ciphertexts only) with the client-held key;
* the strategy's state, the process's RNG states (torch, numpy, Python) and, in HE modes, the
  public key's fingerprint, so a resumed run can prove it has the same key.

It never holds a private key: the configuration names at most the folder the key was loaded from.
Clients draw their batches from :func:`~torchhefl.federated.client.round_generator`, a pure
function of (seed, client, round), so nothing of theirs needs saving. Under DP their noise and
batches come from a key each site draws from the OS every round and never saves: a resumed DP run
is statistically the same run (same noise distribution, same epsilon), not the same draws.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from torchhefl.exceptions import ConfigError, KeyMismatchError, MalformedMessageError
from torchhefl.secure import strict_json, wire
from torchhefl.secure.files import write_private_file

__all__ = ["CHECKPOINT_FILE", "Checkpoint", "load_checkpoint", "restore_checkpoint", "save_checkpoint"]

CHECKPOINT_FILE = "checkpoint.thefl"
"""The file name inside the checkpoint folder."""

_KIND = "torchhefl.checkpoint"
_FORMAT = 1
_META_KEYS = {"format", "round", "config", "strategy", "key_fingerprint", "numpy_rng", "python_rng"}
_MAX_CHECKPOINT_BYTES = 1 << 34


@dataclass
class Checkpoint:
    """What a checkpoint holds (see the module docstring)."""

    round: int
    config: dict
    global_model: bytes
    strategy: dict = field(default_factory=dict)
    key_fingerprint: str | None = None
    torch_rng: np.ndarray | None = None
    numpy_rng: dict | None = None
    python_rng: list | None = None

    def to_bytes(self) -> bytes:
        meta = {
            "format": _FORMAT,
            "round": self.round,
            "config": self.config,
            "strategy": self.strategy,
            "key_fingerprint": self.key_fingerprint,
            "numpy_rng": {k: v for k, v in (self.numpy_rng or {}).items() if k != "keys"},
            "python_rng": self.python_rng,
        }
        arrays = {"global_model": np.frombuffer(self.global_model, dtype=np.uint8)}
        if self.torch_rng is not None:
            arrays["torch_rng"] = np.asarray(self.torch_rng, dtype=np.uint8)
        if self.numpy_rng is not None:
            arrays["numpy_rng_keys"] = np.asarray(self.numpy_rng["keys"], dtype="<u4")
        return wire.encode(_KIND, meta, arrays)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Checkpoint":
        """Parse and check checkpoint bytes; raises :class:`MalformedMessageError` with the reason."""
        msg = wire.decode(blob, kind=_KIND, max_bytes=_MAX_CHECKPOINT_BYTES)
        meta = msg.meta
        if set(meta) != _META_KEYS or meta["format"] != _FORMAT:
            raise MalformedMessageError("not a checkpoint this build can read (unknown fields or format)")
        rnd, config, fp = meta["round"], meta["config"], meta["key_fingerprint"]
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
            raise MalformedMessageError(f"checkpoint round {rnd!r} is not a non-negative integer")
        if not isinstance(config, dict) or not isinstance(meta["strategy"], dict):
            raise MalformedMessageError("checkpoint config and strategy must be JSON objects")
        if fp is not None and not isinstance(fp, str):
            raise MalformedMessageError("checkpoint key fingerprint must be a string")
        if set(msg.arrays) - {"global_model", "torch_rng", "numpy_rng_keys"} or "global_model" not in msg.arrays:
            raise MalformedMessageError(f"checkpoint arrays {sorted(msg.arrays)} are not the expected ones")
        if msg.arrays["global_model"].dtype != np.uint8 or msg.arrays["global_model"].ndim != 1:
            raise MalformedMessageError("checkpoint global model must be a flat byte array")
        _check_strategy(meta["strategy"])
        torch_rng = msg.arrays.get("torch_rng")
        if torch_rng is not None:
            _check_torch_rng(torch_rng)
        numpy_rng = None
        if "numpy_rng_keys" in msg.arrays:
            numpy_rng = dict(_check_numpy_rng(meta["numpy_rng"], msg.arrays["numpy_rng_keys"]), keys=msg.arrays["numpy_rng_keys"].copy())
        elif meta["numpy_rng"] != {}:
            raise MalformedMessageError("checkpoint numpy RNG state without its keys")
        _check_python_rng(meta["python_rng"])
        return cls(
            round=rnd,
            config=config,
            global_model=msg.arrays["global_model"].tobytes(),
            strategy=meta["strategy"],
            key_fingerprint=fp,
            torch_rng=torch_rng.copy() if torch_rng is not None else None,
            numpy_rng=numpy_rng,
            python_rng=meta["python_rng"],
        )


def _check_strategy(saved, depth: int = 0) -> None:
    """A strategy's saved state: ``{"name": str, "state": {...}, "base": <the same>}`` (the last two optional)."""
    if (
        not isinstance(saved, dict)
        or not set(saved) <= {"name", "state", "base"}
        or not isinstance(saved.get("name"), str)
        or not isinstance(saved.get("state", {}), dict)
        or depth > 8
    ):
        raise MalformedMessageError("checkpoint strategy state is not a {name, state, base} object")
    if "base" in saved:
        _check_strategy(saved["base"], depth + 1)


_MT_WORDS = 624  # the Mersenne Twister's state, in 32-bit words


def _check_torch_rng(state: np.ndarray) -> None:
    """torch's CPU generator state, tried on a generator of its own (torch checks the contents)."""
    if state.dtype != np.uint8 or state.shape != (torch.get_rng_state().numel(),):
        raise MalformedMessageError(f"checkpoint torch RNG state of shape {state.shape} is not this build's")
    try:
        torch.Generator().set_state(torch.from_numpy(state.copy()))
    except RuntimeError as e:
        raise MalformedMessageError(f"checkpoint torch RNG state is invalid: {e}") from None


def _check_numpy_rng(meta, keys: np.ndarray) -> dict:
    """numpy's legacy ``get_state()`` without the keys (which travel as an array)."""
    if (
        not isinstance(meta, dict)
        or set(meta) != {"name", "pos", "has_gauss", "cached_gaussian"}
        or meta["name"] != "MT19937"
        or type(meta["pos"]) is not int
        or not 0 <= meta["pos"] <= _MT_WORDS
        or meta["has_gauss"] not in (0, 1)
        or type(meta["has_gauss"]) is not int
        or type(meta["cached_gaussian"]) not in (int, float)
    ):
        raise MalformedMessageError("checkpoint numpy RNG state is not numpy's MT19937 state")
    if keys.dtype != np.dtype("<u4") or keys.shape != (_MT_WORDS,):
        raise MalformedMessageError(f"checkpoint numpy RNG keys of shape {keys.shape}, expected ({_MT_WORDS},) uint32")
    return meta


def _check_python_rng(state) -> None:
    """``random.getstate()`` as JSON: ``[3, [624 words and the position], gauss_next or null]``, or null."""
    if state is None:
        return
    if (
        not isinstance(state, list)
        or len(state) != 3
        or type(state[0]) is not int
        or state[0] != 3
        or not isinstance(state[1], list)
        or len(state[1]) != _MT_WORDS + 1
        or not all(type(w) is int and 0 <= w < 1 << 32 for w in state[1])
        or not 0 <= state[1][-1] <= _MT_WORDS
        or not (state[2] is None or type(state[2]) in (int, float))
    ):
        raise MalformedMessageError("checkpoint Python RNG state is not random.getstate()'s")


def checkpoint_of(sim, config_dict: dict) -> Checkpoint:
    """A checkpoint of ``sim`` (a :class:`~torchhefl.federated.simulation.Simulation`) as it stands."""
    server = sim.server
    public_key = sim.public_key
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return Checkpoint(
        round=server.round,
        config=strict_json.loads(json.dumps(config_dict, allow_nan=False)),  # a copy as it will read back
        global_model=server.exchange.global_checkpoint(),
        strategy=_strategy_state(server.strategy),
        key_fingerprint=None if public_key is None else public_key.fingerprint,
        torch_rng=torch.get_rng_state().numpy(),
        numpy_rng={"name": name, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        python_rng=[version, list(state), gauss_next],
    )


def save_checkpoint(directory: str | Path, sim, config_dict: dict) -> Path:
    """Write ``sim``'s checkpoint to ``directory/checkpoint.thefl`` (mode 0600), replacing the last one atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    write_private_file(path, checkpoint_of(sim, config_dict).to_bytes())
    return path


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read ``directory/checkpoint.thefl``; :class:`ConfigError` with the reason if it is missing or corrupt."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path} (was the run started by this version, or with another --checkpoint-dir?)")
    try:
        return Checkpoint.from_bytes(path.read_bytes())
    except MalformedMessageError as e:
        raise ConfigError(f"checkpoint {path} is corrupt: {e}") from None


def restore_checkpoint(sim, checkpoint: Checkpoint) -> None:
    """Put ``checkpoint``'s global model, round, strategy and RNG states into a freshly built ``sim``.

    Raises:
        ConfigError: the run's key is not the checkpoint's (fingerprints differ), or the checkpoint
            does not fit this run's model or strategy.
    """
    public_key = sim.public_key
    fingerprint = None if public_key is None else public_key.fingerprint
    if fingerprint != checkpoint.key_fingerprint:
        if checkpoint.key_fingerprint is None or fingerprint is None:
            raise ConfigError("the checkpoint and this run disagree on whether parameters are encrypted")
        raise ConfigError(
            f"the key in --key-dir has fingerprint {fingerprint[:16]}, but the run was trained under "
            f"{checkpoint.key_fingerprint[:16]}: give the run's own key"
        )
    server = sim.server
    try:
        server.exchange.restore_global(checkpoint.global_model)
    except (MalformedMessageError, KeyMismatchError) as e:
        raise ConfigError(f"the checkpointed model does not fit this run: {e}") from None
    _load_strategy_state(server.strategy, checkpoint.strategy)
    server.round = checkpoint.round
    if checkpoint.round and server.assume_sites_hold_global():
        # the simulated sites stand for machines that kept the model they last evaluated
        for client in sim.clients:
            client.remember_global(server.exchange.global_payload())
    if checkpoint.torch_rng is not None:
        torch.set_rng_state(torch.from_numpy(np.asarray(checkpoint.torch_rng, dtype=np.uint8).copy()))
    if checkpoint.numpy_rng is not None:
        s = checkpoint.numpy_rng
        np.random.set_state((s["name"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if checkpoint.python_rng is not None:
        version, state, gauss_next = checkpoint.python_rng
        random.setstate((version, tuple(state), gauss_next))


def _strategy_state(strategy) -> dict:
    """A strategy's name and state: its ``state_dict()`` if it has one, else its scalar attributes."""
    if hasattr(strategy, "state_dict"):
        return {"name": strategy.name, "state": strategy.state_dict()}
    state = {k: v for k, v in vars(strategy).items() if isinstance(v, (bool, int, float, str))}
    out = {"name": strategy.name, "state": state}
    base = getattr(strategy, "base", None)
    if base is not None:
        out["base"] = _strategy_state(base)
    return out


def _load_strategy_state(strategy, saved: dict) -> None:
    if saved.get("name") != strategy.name:
        raise ConfigError(f"the checkpoint was made with strategy {saved.get('name')!r}, this run uses {strategy.name!r}")
    state = saved.get("state", {})
    if hasattr(strategy, "load_state_dict"):
        strategy.load_state_dict(state)
    else:
        for k, v in state.items():
            if k in vars(strategy) and type(vars(strategy)[k]) is type(v):
                setattr(strategy, k, v)
    base = getattr(strategy, "base", None)
    if base is not None and "base" in saved:
        _load_strategy_state(base, saved["base"])
