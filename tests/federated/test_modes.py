"""Adding a mode is one file: this file registers a mode of its own and runs it everywhere a mode runs.

The toy mode is plain mode with a fixed-point round trip: a site sends each parameter of its update
as the integer ``round(v * 2^24)`` (an ``int64`` array on the wire), and the server reads it back
as ``m / 2^24`` before averaging. Nothing outside this file knows it: the simulation, the
configuration's checks and the Flower adapters find it through :mod:`torchhefl.federated.modes`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from torchhefl.exceptions import ConfigError, MalformedMessageError
from torchhefl.federated import TrainConfig, build
from torchhefl.federated.exchange import PlainClientExchange, PlainServerExchange
from torchhefl.federated.messages import decode_state, encode_state
from torchhefl.federated.modes import MODES, Mode, ModeParts, SiteParts, get_mode, mode_of, register_mode
from torchhefl.secure.encoding import dequantize, quantize

SCALE = 24  # bits after the binary point
ROUNDS = 3
SITES = 3


class FixedPointClientExchange(PlainClientExchange):
    """Sends the update as integers ``round(v * 2^SCALE)``."""

    def write_update(self, state: Mapping[str, torch.Tensor], num_examples: int) -> bytes:
        ints = {k: np.asarray(quantize(v, SCALE), dtype=np.int64).reshape(tuple(v.shape)) for k, v in state.items()}
        return encode_state(ints, {"num_examples": int(num_examples), "scale": SCALE})


class FixedPointServerExchange(PlainServerExchange):
    """Reads the integers back as ``m / 2^SCALE`` before the plain average."""

    def check_update(self, payload: bytes, **context) -> tuple[dict[str, np.ndarray], int]:
        state, meta = decode_state(payload, expected=self.state)
        if meta.get("scale") != SCALE or any(v.dtype != torch.int64 for v in state.values()):
            raise MalformedMessageError(f"a fixed-point update has int64 values at scale {SCALE}")
        n = meta.get("num_examples")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise MalformedMessageError(f"update carries an invalid num_examples {n!r}")
        return {k: dequantize(v.reshape(-1).tolist(), SCALE).reshape(tuple(v.shape)).numpy() for k, v in state.items()}, n


class FixedPointMode(Mode):
    name = "fixed_point"
    cli_mode = "fixedpoint"

    def parts(self, config: TrainConfig, initial: OrderedDict) -> ModeParts:
        return ModeParts(FixedPointServerExchange(initial), [FixedPointClientExchange() for _ in range(config.clients)])

    def server_exchange(self, config, initial, *, public_key, key_dir, allow_insecure_keys):
        return FixedPointServerExchange(initial)

    def site(self, config, *, key_dir, allow_insecure_keys) -> SiteParts:
        return SiteParts(FixedPointClientExchange())


@pytest.fixture
def fixed_point_mode():
    mode = register_mode(FixedPointMode())
    yield mode
    del MODES[mode.name]


def _config(mode: str) -> TrainConfig:
    return TrainConfig(mode=mode, rounds=ROUNDS, clients=SITES, seed=3)


def _simulate(config: TrainConfig):
    sim = build(config)
    sim.server.setup()
    results = [sim.server.run_round(r) for r in range(1, config.rounds + 1)]
    return sim, results


def _max_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


#: how far the toy's model may be from plain mode's: half a unit in the last place per value per
#: round, which training and averaging in the following rounds may grow by a small factor
TOLERANCE = ROUNDS * 2.0**-SCALE


def test_the_registry_resolves_the_cli_flags():
    assert mode_of(TrainConfig(mode="plain")) is get_mode("plain")
    assert mode_of(TrainConfig(mode="he", key_holder="clients")) is get_mode("clients_key")
    assert mode_of(TrainConfig(mode="he", key_holder="server")) is get_mode("server_key")
    with pytest.raises(ConfigError, match="--mode must be one of plain, he; got 'fixedpoint'"):
        TrainConfig(mode="fixedpoint").validate()
    with pytest.raises(ValueError, match="a mode named 'plain' is registered already"):
        register_mode(get_mode("plain"))


def test_a_mode_registered_here_runs_in_the_simulation(fixed_point_mode):
    toy, toy_results = _simulate(_config("fixedpoint"))
    plain, plain_results = _simulate(_config("plain"))
    assert isinstance(toy.server.exchange, FixedPointServerExchange)
    assert all(isinstance(c.exchange, FixedPointClientExchange) for c in toy.clients)
    difference = _max_difference(toy.final_state(), plain.final_state())
    print(f"fixed point vs plain: {difference:.3e} (tolerance {TOLERANCE:.3e})")
    assert 0.0 < difference <= TOLERANCE  # the round trip ran, and cost no more than fixed point does
    for a, b in zip(toy_results, plain_results):
        assert a["clients"] == b["clients"] == ["site0", "site1", "site2"]
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1 / 50)
    # integers cross the wire: the toy's server refuses plain mode's float update
    state = plain.final_state()
    with pytest.raises(MalformedMessageError, match="a fixed-point update has int64 values at scale 24"):
        toy.server.exchange.check_update(PlainClientExchange().write_update(state, 10))
    update, n = toy.server.exchange.check_update(FixedPointClientExchange().write_update(state, 10))
    assert n == 10 and max(float(np.abs(update[k] - state[k].numpy()).max()) for k in state) <= 2.0 ** -(SCALE + 1)


@pytest.fixture
def task_identity():
    """Flower messages take their run and sender from the process's task identity (as in tests/flower)."""
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def test_a_mode_registered_here_runs_over_the_flower_grid(fixed_point_mode, task_identity, tmp_path):
    from tests.flower.test_adapters import FakeGrid
    from torchhefl.flower.deployment import DeploymentSettings
    from torchhefl.flower.server_app import serve

    run_config = {"mode": "fixedpoint", "rounds": ROUNDS, "clients": SITES, "seed": 3, "node-timeout": 5.0,
                  "reply-timeout": 5.0}
    model_out = tmp_path / "model.pt"
    nodes = {10 + i: {"partition-id": i, "num-partitions": SITES, "model-out": str(model_out)} for i in range(SITES)}
    lines: list[str] = []
    settings = DeploymentSettings.from_run_config(run_config)
    assert settings.config.mode == "fixedpoint"
    summary = serve(FakeGrid(run_config, nodes), settings, echo=lines.append)
    plain, plain_results = _simulate(_config("plain"))
    saved = torch.load(model_out)
    difference = _max_difference(saved, plain.final_state())
    print(f"over Flower, fixed point vs plain: {difference:.3e} (tolerance {TOLERANCE:.3e})")
    assert 0.0 < difference <= TOLERANCE
    assert lines[-1].split()[:2] == ["round", f"{ROUNDS}/{ROUNDS}"]
    assert summary["rounds"] == ROUNDS
    assert summary["test_accuracy"] == pytest.approx(plain_results[-1]["test_accuracy"], abs=1 / 50)
