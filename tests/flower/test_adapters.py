"""The Flower adapters without processes: records, configs, the app file, certificates, and whole
runs over a grid that hands every message to a freshly built ClientApp, as a SuperNode does."""

from __future__ import annotations

import csv
import ipaddress
import json
import logging
import secrets
import stat
import warnings
from types import SimpleNamespace

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tomli  # noqa: E402  (comes with flwr)
import torch  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from flwr.app import Context, Error, Message, RecordDict  # noqa: E402

from torchhefl.exceptions import ConfigError, MalformedMessageError, ProtocolError  # noqa: E402
from torchhefl.federated import ClientUnavailableError, TrainConfig, build  # noqa: E402
from torchhefl.federated.config import DP_CLIP_NORM, DP_LR  # noqa: E402
from torchhefl.federated.messages import FIT_INS, STANDARDIZE_INS, STATS_INS, decode_request, encode_request, payload_of  # noqa: E402
from torchhefl.flower import client_app  # noqa: E402
from torchhefl.flower.app import write_app  # noqa: E402
from torchhefl.flower.certificates import generate_certificates  # noqa: E402
from torchhefl.flower.deployment import (  # noqa: E402
    HELLO_TYPE,
    RUN_CONFIG_DEFAULTS,
    DeploymentSettings,
    Site,
    build_server,
    read_hellos,
    server_roster,
)
from torchhefl.flower.records import WIRE_DTYPE, WIRE_STYPE, pack, unpack  # noqa: E402
from torchhefl.flower.server_app import app_directory, serve  # noqa: E402
from torchhefl.flower.transport import FlowerTransport, exchange  # noqa: E402
from torchhefl.privacy import generator as generator_module  # noqa: E402
from torchhefl.secure import InsecureKeyWarning, generate_keypair  # noqa: E402
from torchhefl.secure.identity import Roster, SiteIdentity  # noqa: E402

SITES = 3


@pytest.fixture(autouse=True)
def task_identity():
    """Flower messages take their run and sender from the process's task identity, as a ServerApp process has it."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    """The sites' key pair (private.json), each site's signing key (site<i>/identity.json) and their
    roster (roster.json), as ``python -m train.keys generate`` and ``identities`` write them."""
    path = tmp_path_factory.mktemp("keys")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        public_key, private_key = generate_keypair(512, allow_insecure=True)
    public_key.save(path / "public.json")
    private_key.save(path / "private.json")
    identities = [SiteIdentity(f"site{i}") for i in range(SITES)]
    for identity in identities:
        (path / identity.cid).mkdir()
        identity.save(path / identity.cid / "identity.json")
    Roster.of(identities).save(path / "roster.json")
    return path


def _roster_settings(key_dir) -> dict:
    """The run config keys of the roster: its fingerprint, and where the ServerApp reads it."""
    roster = key_dir / "roster.json"
    return {"roster-fingerprint": Roster.load(roster).fingerprint, "server-roster": str(roster)}


class FakeGrid:
    """A Grid whose SuperNodes answer at once: each message goes to the real ClientApp with a new
    Context built from the node's config and its per-run state, as Flower's ClientApp processes get."""

    def __init__(self, run_config: dict, node_configs: dict[int, dict], *, silent: tuple[int, ...] = (), app=None) -> None:
        self.run_config, self.node_configs, self.silent = run_config, node_configs, silent
        self.app = app or client_app.app
        self.states = {node: RecordDict() for node in node_configs}
        self.replies: dict[str, Message] = {}
        self.builds = 0
        self._count = 0

    def get_node_ids(self):
        return list(self.node_configs)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            self._count += 1
            mid = f"message-{self._count}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            node = msg.metadata.dst_node_id
            if node in self.silent:
                continue
            context = Context(run_id=1, node_id=node, node_config=self.node_configs[node], state=self.states[node], run_config=self.run_config)
            self.builds += 1
            try:
                reply = self.app(message=msg, context=context)
            except Exception as e:  # what flwr-clientapp does with an exception
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            self.replies[mid] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(mid) for mid in list(message_ids) if mid in self.replies]


def _node_configs(key_dir, **extra) -> dict[int, dict]:
    # node ids deliberately out of site order: the hello, not the id, says which site a node runs
    ids = [907, 15, 4242]
    return {
        ids[i]: {
            "partition-id": i, "num-partitions": SITES, "key-dir": str(key_dir), "allow-insecure-keys": True,
            "identity": str(key_dir / f"site{i}" / "identity.json"), "roster": str(key_dir / "roster.json"), **extra,
        }
        for i in range(SITES)
    }


def _simulate(config: TrainConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(config)
        sim.server.setup()
        results = [sim.server.run_round(r) for r in range(1, config.rounds + 1)]
    return sim.final_state(), results


# -- whole runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_run_over_fake_grid_equals_simulation(mode, key_dir, tmp_path):
    run_config = {"mode": mode, "rounds": 2, "clients": SITES, "seed": 1, "node-timeout": 5.0, "reply-timeout": 5.0, **_roster_settings(key_dir)}
    nodes = _node_configs(key_dir, **{"model-out": str(tmp_path / "model.pt")})
    grid = FakeGrid(run_config, nodes)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        summary = serve(grid, DeploymentSettings.from_run_config(run_config), echo=lines.append)

    config = TrainConfig(mode=mode, rounds=2, clients=SITES, seed=1, extra={"key_dir": str(key_dir), "allow_insecure_keys": True})
    expected, results = _simulate(config)
    saved = torch.load(tmp_path / "model.pt")
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)
    assert "sites: site0 on node 907, site1 on node 15, site2 on node 4242" in lines[:2]
    assert lines[-1].split()[:2] == ["round", "2/2"]
    # one fresh ClientApp per message: hello, stats, standardize, then fit + evaluate per round
    assert grid.builds == SITES * (3 + 2 * 2)
    if mode == "he":  # the same messages cross the wire as in simulation, byte for byte in size
        assert summary["bytes_up"] == sum(r["bytes_up"] for r in results)
        assert summary["bytes_down"] == sum(r["bytes_down"] for r in results)
    assert summary["test_accuracy"] == pytest.approx(results[-1]["test_accuracy"])


def test_a_packing_precision_in_the_run_config_reaches_every_party(key_dir, tmp_path):
    run_config = {"rounds": 2, "clients": SITES, "seed": 1, "node-timeout": 5.0, "reply-timeout": 5.0,
                  "he-resolution": 1e-2, **_roster_settings(key_dir)}
    grid = FakeGrid(run_config, _node_configs(key_dir, **{"model-out": str(tmp_path / "model.pt")}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        summary = serve(grid, DeploymentSettings.from_run_config(run_config), echo=lambda line: None)
    config = TrainConfig(rounds=2, clients=SITES, seed=1, he_resolution=1e-2,
                         extra={"key_dir": str(key_dir), "allow_insecure_keys": True})
    expected, results = _simulate(config)
    saved = torch.load(tmp_path / "model.pt")
    for name, tensor in expected.items():  # the same rounded model: the sites packed as the simulation did
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in results)


def test_sites_keep_their_timings_unless_they_share_them(key_dir, tmp_path, caplog):
    # a site's training time reveals its number of local steps: by default it stays in the site's
    # log, and the server's timings.csv has only what the server measured itself
    caplog.set_level(logging.INFO, logger="flwr")

    def train_seconds(nodes, name):
        run_config = {"mode": "plain", "rounds": 1, "clients": SITES, "node-timeout": 5.0, "reply-timeout": 5.0,
                      "run-dir": str(tmp_path / name)}
        serve(FakeGrid(run_config, nodes), DeploymentSettings.from_run_config(run_config), echo=lambda line: None)
        with (tmp_path / name / "timings.csv").open() as f:
            (row,) = csv.DictReader(f)
        return float(row["seconds_train"])

    assert train_seconds(_node_configs(key_dir), "private") == 0.0
    logged = [r.getMessage() for r in caplog.records if "fit of round 1 took" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in logged) == ["site 0", "site 1", "site 2"]
    assert all("train " in m and "encrypt " in m for m in logged)
    assert train_seconds(_node_configs(key_dir, **{"share-timings": True}), "shared") > 0.0


class _RecordingGrid(FakeGrid):
    """A FakeGrid that keeps every reply the ServerApp pulls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pulled: list[Message] = []

    def pull_messages(self, message_ids):
        replies = super().pull_messages(message_ids)
        self.pulled.extend(replies)
        return replies


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_dp_run_over_fake_grid_draws_secret_noise_and_keeps_no_key(mode, key_dir, tmp_path, monkeypatch):
    """Under Flower too the noise comes from a key each site draws from the OS per round: not in
    its node state, its replies or its files, and not the simulation's (nor the seed's) draws."""
    keys = []  # the keys of the sites' SecureGenerators, as they draw them

    def token_bytes(n=None):
        keys.append(secrets.token_bytes(n))
        return keys[-1]

    monkeypatch.setattr(generator_module, "secrets", SimpleNamespace(token_bytes=token_bytes))
    run_config = {"mode": mode, "rounds": 2, "clients": SITES, "seed": 2, "epsilon": 1.0, "node-timeout": 5.0, "reply-timeout": 5.0,
                  **_roster_settings(key_dir)}
    grid = _RecordingGrid(run_config, _node_configs(key_dir, **{"model-out": str(tmp_path / "model.pt")}))
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        summary = serve(grid, DeploymentSettings.from_run_config(run_config), echo=lines.append)
    assert len(keys) == SITES * 2  # one per site and round

    config = TrainConfig(
        mode=mode, rounds=2, clients=SITES, seed=2, epsilon=1.0, lr=DP_LR, clip_norm=DP_CLIP_NORM,
        extra={"key_dir": str(key_dir), "allow_insecure_keys": True},
    )
    expected, results = _simulate(config)
    saved = torch.load(tmp_path / "model.pt")
    assert max(float((saved[n] - t).abs().max()) for n, t in expected.items()) > 1e-4  # other noise
    assert summary["epsilon"] == pytest.approx(results[-1]["epsilon"])
    assert 0 < summary["epsilon"] <= 1.0 + 1e-9
    assert " eps " in lines[-2] and lines[-1].startswith("privacy: epsilon spent")
    # no key in what a node keeps between messages, nor in what it sent, nor in its saved model
    records = [record for state in grid.states.values() for record in state.config_records.values()]
    values = [item for record in records for v in record.values() for item in (v if isinstance(v, list) else [v])]
    kept = [repr(dict(record)).encode() for record in records] + [v for v in values if isinstance(v, bytes)]
    sent = [unpack(m.content) for m in grid.pulled if m.has_content() and m.content.array_records]
    assert kept and len(sent) >= SITES * 2
    for key in keys:
        for blob in [*kept, *sent, (tmp_path / "model.pt").read_bytes()]:
            assert key not in blob and key.hex().encode() not in blob


class _ForgetfulGrid(FakeGrid):
    """A FakeGrid whose node ``forget`` loses the model it kept whenever a fit request names it."""

    def __init__(self, *args, forget: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.forget = forget

    def push_messages(self, messages):
        messages = list(messages)
        for msg in messages:
            try:
                request = decode_request(unpack(msg.content))
            except MalformedMessageError:  # the hello carries no torchhefl message
                continue
            if msg.metadata.dst_node_id == self.forget and request.kind == "fit_ins" and "payload" not in request.arrays:
                del self.states[self.forget].config_records["torchhefl.site"]["global"]
        return super().push_messages(messages)


def test_a_site_that_lost_its_model_asks_for_it_over_flower(key_dir, tmp_path):
    run_config = {"mode": "he", "rounds": 2, "clients": SITES, "seed": 1, "node-timeout": 5.0, "reply-timeout": 5.0, **_roster_settings(key_dir)}
    nodes = _node_configs(key_dir)
    node = list(nodes)[1]
    nodes[node]["model-out"] = str(tmp_path / "model.pt")
    grid = _ForgetfulGrid(run_config, nodes, forget=node)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        serve(grid, DeploymentSettings.from_run_config(run_config), echo=lambda line: None)
    config = TrainConfig(mode="he", rounds=2, clients=SITES, seed=1, extra={"key_dir": str(key_dir), "allow_insecure_keys": True})
    expected, _ = _simulate(config)
    saved = torch.load(tmp_path / "model.pt")
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)
    # round 2's fit took it one more message: its request for the model, answered with the model
    assert grid.builds == SITES * (3 + 2 * 2) + 1


def test_hem_run_over_fake_grid_equals_simulation(key_dir, tmp_path):
    # --key-holder server: the ServerApp reads the key pair from its own folder; the sites hold no
    # private key (no key-dir) and keep their pairwise-mask key and mid-fit state in the node state
    common = {"rounds": 2, "clients": SITES, "seed": 1, "local-epochs": 3}
    run_config = {
        "mode": "he", "key-holder": "server", **common, "node-timeout": 5.0, "reply-timeout": 5.0,
        "run-dir": str(tmp_path / "run"), "server-key-dir": str(key_dir), "server-allow-insecure-keys": True,
        **_roster_settings(key_dir),
    }
    nodes = {n: {k: v for k, v in c.items() if k != "key-dir"} for n, c in _node_configs(key_dir).items()}
    grid = FakeGrid(run_config, nodes)
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        summary = serve(grid, DeploymentSettings.from_run_config(run_config), echo=lines.append)

    config = TrainConfig(
        mode="he", key_holder="server", clip_norm=None, rounds=2, clients=SITES, seed=1, local_epochs=3,
        extra={"key_dir": str(key_dir), "allow_insecure_keys": True},
    )
    expected, results = _simulate(config)
    saved = torch.load(tmp_path / "run" / "model.pt")
    for name, tensor in expected.items():  # a refresh rounds value + random mask: runs differ by ~1e-10
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)
    assert lines[-1].split()[:2] == ["round", "2/2"]
    # one fresh ClientApp per message: hello, keys, peers, stats, standardize; then per round secure
    # aggregation's keys and shares, a fit, one message per refresh, the survivor check and the
    # unmasking (the server evaluates the model it holds: no evaluate messages)
    assert grid.builds == SITES * 5 + sum(SITES * 5 + r["refreshes"] for r in results)
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in results)
    assert summary["bytes_down"] == sum(r["bytes_down"] for r in results)
    assert summary["test_accuracy"] == pytest.approx(results[-1]["test_accuracy"])
    # what a site keeps between messages: its own secrets, and no fit left half-done; its secure
    # aggregation state says it uploaded in round 2 (so it keys no round up to 2 again)
    for state in grid.states.values():
        record = state.config_records["torchhefl.site"]
        assert len(record["secret-x25519"]) == 32 and record["secret-continuation"] == b""
        assert json.loads(record["secret-secagg"])["last_uploaded"] == 2


class _DroppingGrid(FakeGrid):
    """A FakeGrid whose node ``drop`` goes silent for good once it has answered with a ``kind`` reply
    in round ``server_round``, as a SuperNode killed right after sending it; keeps the torchhefl
    request kinds each node was sent, as ``(kind, round, attempt)``."""

    def __init__(self, *args, drop: int, kind: str, server_round: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop, self.kind, self.server_round = drop, kind, server_round
        self.sent: dict[int, list[tuple]] = {node: [] for node in self.node_configs}

    def push_messages(self, messages):
        messages = list(messages)
        for msg in messages:
            try:
                request = decode_request(unpack(msg.content))
            except MalformedMessageError:  # the hello carries no torchhefl message
                continue
            self.sent[msg.metadata.dst_node_id].append((request.kind, request.meta.get("round"), request.meta.get("attempt")))
        ids = super().push_messages(messages)
        for msg, mid in zip(messages, ids):
            reply = self.replies.get(mid)
            if msg.metadata.dst_node_id != self.drop or reply is None or reply.has_error() or not reply.content.array_records:
                continue
            answer = decode_request(unpack(reply.content))
            if answer.kind == self.kind and answer.meta.get("round") == self.server_round:
                self.silent = (*self.silent, self.drop)
        return ids


class _VanishesAfter:
    """In process: a site that answers until it sent a ``kind`` reply in ``server_round``, then is unreachable."""

    def __init__(self, client, kind: str, server_round: int) -> None:
        self.client, self.kind, self.server_round, self.gone = client, kind, server_round, False

    def handle(self, request: bytes) -> bytes:
        if self.gone:
            raise ClientUnavailableError(f"{self.client.cid} is gone")
        reply = self.client.handle(request)
        msg = decode_request(reply)
        self.gone = msg.kind == self.kind and msg.meta.get("round") == self.server_round
        return reply


@pytest.mark.parametrize(
    ("kind", "in_sum"), [("fit_res", "site0 site1 site2"), ("secagg_shares_res", "site0 site2")],
    ids=["after-upload", "after-sharing"],
)
def test_hem_site_that_drops_over_fake_grid_leaves_a_round_done_in_one_attempt(kind, in_sum, key_dir, tmp_path):
    """site1's SuperNode vanishes in round 1 after its upload (or after sharing its secrets): the
    others' shares unmask the sum in the same attempt, and the run trains on without it, to the model
    the simulation trains with the same site gone at the same step."""
    run_config = {
        "mode": "he", "key-holder": "server", "rounds": 2, "clients": SITES, "seed": 3, "node-timeout": 5.0,
        "reply-timeout": 1.0, "run-dir": str(tmp_path / "run"), "server-key-dir": str(key_dir),
        "server-allow-insecure-keys": True, **_roster_settings(key_dir),
    }
    nodes = {n: {k: v for k, v in c.items() if k != "key-dir"} for n, c in _node_configs(key_dir).items()}
    grid = _DroppingGrid(run_config, nodes, drop=15, kind=kind)  # node 15 runs site1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        serve(grid, DeploymentSettings.from_run_config(run_config), echo=lambda line: None)

    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert rows[0]["clients"] == str(len(in_sum.split())) and rows[0]["dropped"] == " ".join(
        c for c in ("site0", "site1", "site2") if c not in in_sum.split()
    )
    assert rows[1]["clients"] == "2" and rows[1]["dropped"] == "site1"  # gone for good: it keys no round 2
    # one attempt: every site was asked to fit once per round, never again
    for node, sent in grid.sent.items():
        fits = [(r, a) for k, r, a in sent if k == FIT_INS]
        assert fits == ([(1, 1)] if node == 15 else [(1, 1), (2, 1)])
    # after its upload site1 was still asked to sign the survivor set (it did not answer); the
    # survivors' shares then unmasked the sum over all three uploads
    site1_round1 = [k for k, r, _ in grid.sent[15] if r == 1]
    assert ("secagg_check_ins" in site1_round1) == (kind == "fit_res")
    assert "secagg_unmask_ins" not in site1_round1

    config = TrainConfig(
        mode="he", key_holder="server", clip_norm=None, rounds=2, clients=SITES, seed=3,
        extra={"key_dir": str(key_dir), "allow_insecure_keys": True},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(config)
        sim.transport.clients["site1"] = _VanishesAfter(sim.clients[1], kind, 1)
        sim.server.setup()
        results = [sim.server.run_round(r) for r in (1, 2)]
    assert [r["attempts"] for r in results] == [1, 1]
    assert " ".join(results[0]["clients"]) == in_sum
    saved = torch.load(tmp_path / "run" / "model.pt")
    for name, tensor in sim.final_state().items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)


def test_hem_site_resumes_a_fit_from_its_node_state(key_dir, tmp_path):
    """A HEM fit that waits for a refresh continues in a rebuilt client from the node state alone
    (one product per local step: refreshes in the middle of local training, not only before upload)."""
    config = TrainConfig(
        mode="he", key_holder="server", clip_norm=None, rounds=1, clients=SITES, seed=2, local_epochs=3,
        extra={"key_dir": str(key_dir), "allow_insecure_keys": True, "hem_steps_per_product": 1},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = build(config)
    # site0 runs as a Site rebuilt per message, with the signing key and roster the simulation made
    sim.clients[0].exchange.identity.save(tmp_path / "identity.json")
    roster = sim.server.exchange.roster
    roster.save(tmp_path / "roster.json")
    node = {"partition-id": 0, "num-partitions": SITES, "allow-insecure-keys": True,
            "identity": str(tmp_path / "identity.json"), "roster": str(tmp_path / "roster.json")}
    state = RecordDict()
    # the other two stay in process
    sim.transport.clients["site0"] = _Rebuilt(config, node, state, roster.fingerprint)
    sim.server.setup()
    result = sim.server.run_round(1)
    assert result["clients"] == ["site0", "site1", "site2"] and result["refreshes"] > SITES
    # set-up (4), secure aggregation's keys and shares, the fit, the check and the unmasking (5), and
    # at least one refresh of site0's own
    assert sim.transport.clients["site0"].builds > 9
    reference = build(config)
    reference.server.setup()
    reference.server.run_round(1)
    a, b = sim.final_state(), reference.final_state()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # a refresh answer the site did not ask for is refused
    stray = encode_request("refresh_ins", {"round": 1, "attempt": 1, "seq": 1}, b"")
    with pytest.raises(ProtocolError, match="did not ask for"):
        Site(config, node, state, roster_fingerprint=roster.fingerprint).handle(stray)


class _Rebuilt:
    """Answers each request with a Site built afresh from the node config and state, as a SuperNode does."""

    def __init__(self, config, node, state, fingerprint):
        self.config, self.node, self.state, self.fingerprint, self.builds = config, node, state, fingerprint, 0

    def handle(self, request: bytes) -> bytes:
        self.builds += 1
        return Site(self.config, self.node, self.state, roster_fingerprint=self.fingerprint).handle(request)


def test_silent_node_is_left_out_of_the_round(key_dir):
    run_config = {"mode": "plain", "rounds": 1, "clients": SITES, "seed": 0}
    nodes = _node_configs(key_dir)
    grid = FakeGrid(run_config, nodes)
    settings = DeploymentSettings.from_run_config(run_config)
    replies = {}
    for name, reply in exchange(grid, {str(n): (n, HELLO_TYPE, RecordDict()) for n in nodes}, timeout=1.0).items():
        replies[int(name)] = reply.content
    hellos = read_hellos(settings.config, replies)
    transport = FlowerTransport(grid, hellos.nodes, timeout=0.3, poll_interval=0.05)
    server = build_server(settings.config, transport, hellos)
    server.setup()
    grid.silent = (hellos.nodes["site1"],)
    result = server.run_round(1)
    assert result["clients"] == ["site0", "site2"]
    assert result["dropped"] == ["site1"]
    with pytest.raises(ClientUnavailableError, match="site1 did not answer within 0.3s"):
        transport.send("site1", encode_request(STATS_INS, {}))


def test_client_failure_comes_back_as_unavailable(key_dir):
    run_config = {"mode": "plain", "rounds": 1, "clients": SITES}
    grid = FakeGrid(run_config, _node_configs(key_dir))
    transport = FlowerTransport(grid, {"site0": 907}, timeout=1.0)
    # a fit request before standardisation: the client refuses, the transport reports why
    request = encode_request(FIT_INS, {"round": 1, "attempt": 1, "participants": ["site0"], "config": {}}, b"")
    with pytest.raises(ClientUnavailableError, match="client site0 failed: .*"):
        transport.send("site0", request)
    with pytest.raises(ClientUnavailableError, match="has no SuperNode"):
        transport.send("site7", request)
    with pytest.raises(TypeError, match="bytes only"):
        transport.send("site0", "text")


def test_site_state_survives_rebuild_and_rejects_replays(key_dir):
    config = DeploymentSettings.from_run_config({"mode": "plain", "clients": SITES}).config
    node = _node_configs(key_dir)[907]
    state = RecordDict()
    sim = build(TrainConfig(mode="plain", clients=SITES))
    stats = [Site(config, {**node, "partition-id": i}, RecordDict()).handle(encode_request(STATS_INS, {})) for i in range(SITES)]
    summed = sim.server.exchange.sum_statistics([payload_of(decode_request(s)) for s in stats])
    Site(config, node, state).handle(encode_request(STANDARDIZE_INS, {}, summed))
    fit = encode_request(FIT_INS, {"round": 1, "attempt": 1, "participants": ["site0"], "config": {}}, sim.server.exchange.global_payload())
    rebuilt = Site(config, node, state)
    assert rebuilt.client.standardizer is not None  # replayed from the node state
    rebuilt.handle(fit)
    with pytest.raises(MalformedMessageError, match="stale round 1"):
        Site(config, node, state).handle(fit)


# -- configuration -------------------------------------------------------------------------------


def test_run_config_defaults_are_train_config_defaults():
    config = DeploymentSettings.from_run_config({}).config
    assert config.to_dict() == TrainConfig().to_dict()


def test_run_config_errors():
    with pytest.raises(ConfigError, match="unknown run config keys: epochs"):
        DeploymentSettings.from_run_config({"epochs": 3})
    with pytest.raises(ConfigError, match="rounds must be an integer, got 2.5"):
        DeploymentSettings.from_run_config({"rounds": 2.5})
    assert DeploymentSettings.from_run_config({"key-holder": "server"}).config.clip_norm is None  # HEM: nothing to clip
    with pytest.raises(ConfigError, match="clip-norm cannot be used with key-holder=\"server\""):
        DeploymentSettings.from_run_config({"key-holder": "server", "clip-norm": 5.0})
    with pytest.raises(ConfigError, match="server-test-data and server-test-label go together"):
        DeploymentSettings.from_run_config({"server-test-data": "/data/test.csv"})
    with pytest.raises(ConfigError, match="--mode must be one of"):
        DeploymentSettings.from_run_config({"mode": "fhe"})
    assert DeploymentSettings.from_run_config({"clip-norm": 0.0}).config.clip_norm is None
    with pytest.raises(ConfigError, match="epsilon must be a number"):
        DeploymentSettings.from_run_config({"epsilon": "one"})
    with pytest.raises(ConfigError, match="--epsilon needs plaintext local gradients"):
        DeploymentSettings.from_run_config({"epsilon": 1.0, "key-holder": "server"})
    with pytest.raises(ConfigError, match="--epsilon needs a clipping bound"):
        DeploymentSettings.from_run_config({"epsilon": 1.0, "clip-norm": 0.0})
    with pytest.raises(ConfigError, match="--epsilon must be a positive number"):
        DeploymentSettings.from_run_config({"epsilon": -1.0})


def test_run_config_packing_precision():
    assert DeploymentSettings.from_run_config({"he-resolution": 0.0}).config.he_resolution is None  # 0: the default
    config = DeploymentSettings.from_run_config({"he-resolution": 1e-3, "he-rounding": "stochastic"}).config
    assert (config.he_resolution, config.he_rounding) == (1e-3, "stochastic")
    with pytest.raises(ConfigError, match="he-resolution must be a number, got 'fine'"):
        DeploymentSettings.from_run_config({"he-resolution": "fine"})
    with pytest.raises(ConfigError, match="give at least 2\\^-25"):
        DeploymentSettings.from_run_config({"he-resolution": 1e-12})
    with pytest.raises(ConfigError, match="leave them out of a plain run"):
        DeploymentSettings.from_run_config({"mode": "plain", "he-rounding": "stochastic"})


def test_run_config_epsilon_takes_the_cli_defaults():
    assert DeploymentSettings.from_run_config({"epsilon": 0.0}).config.epsilon is None  # 0: no DP
    config = DeploymentSettings.from_run_config({"epsilon": 2.0}).config
    assert (config.epsilon, config.lr, config.clip_norm) == (2.0, DP_LR, DP_CLIP_NORM)
    config = DeploymentSettings.from_run_config({"epsilon": 2.0, "lr": 0.2, "clip-norm": 1.0, "dp-steps": 3}).config
    assert (config.lr, config.clip_norm, config.dp_steps) == (0.2, 1.0, 3)


def test_node_config_errors(key_dir):
    config = DeploymentSettings.from_run_config({"clients": SITES}).config
    with pytest.raises(ConfigError, match="unknown node config keys: partition"):
        Site(config, {"partition": 0})
    with pytest.raises(ConfigError, match="partition-id must be an integer"):
        Site(config, {"partition-id": "0", "num-partitions": SITES})
    with pytest.raises(ConfigError, match="num-partitions=4, but the run has clients=3"):
        Site(config, {"partition-id": 0, "num-partitions": 4})
    with pytest.raises(ConfigError, match="partition-id=3 is outside 0..2"):
        Site(config, {"partition-id": 3, "num-partitions": SITES})
    with pytest.raises(ConfigError, match="share-timings must be true or false, got 'yes'"):
        Site(config, {"partition-id": 0, "num-partitions": SITES, "share-timings": "yes"})
    with pytest.raises(ConfigError, match='needs the site\'s key: node config key-dir="/path/to/keys"'):
        Site(config, {"partition-id": 0, "num-partitions": SITES})
    with pytest.raises(ConfigError, match="a 512-bit key is insecure"):
        Site(config, {"partition-id": 0, "num-partitions": SITES, "key-dir": str(key_dir)})


def test_signing_modes_need_the_site_identity_and_the_roster(key_dir, tmp_path):
    """Both HE modes: a site's node config names its signing key and the roster, the roster is the
    one the run config's fingerprint names, lists the run's sites and this site's key; plain needs none."""
    config = DeploymentSettings.from_run_config({"clients": SITES, "key-holder": "server"}).config
    fingerprint = _roster_settings(key_dir)["roster-fingerprint"]
    node = {"partition-id": 0, "num-partitions": SITES, "allow-insecure-keys": True,
            "identity": str(key_dir / "site0" / "identity.json"), "roster": str(key_dir / "roster.json")}

    def site(fp=fingerprint, **changes):
        return Site(config, {k: v for k, v in {**node, **changes}.items() if v is not None}, roster_fingerprint=fp)

    assert site().client.exchange.identity.cid == "site0"
    # the identity: named, or identity.json in key-dir, of this very site
    with pytest.raises(ConfigError, match='node config identity="/path/to/identity.json" is needed: in he-server mode'):
        site(identity=None)
    assert site(identity=None, **{"key-dir": str(key_dir / "site0")}).client.exchange.identity.cid == "site0"
    with pytest.raises(ConfigError, match=r"node config key-dir \(its identity.json\)=\".*identity.json\": No such file"):
        site(identity=None, **{"key-dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="is the identity of site1, but partition-id=0 runs site0"):
        site(identity=str(key_dir / "site1" / "identity.json"))
    (tmp_path / "garbage.json").write_text("{}")
    with pytest.raises(ConfigError, match='node config identity=".*garbage.json" is not a usable identity'):
        site(identity=str(tmp_path / "garbage.json"))
    # the roster: named, the fingerprint's, of the run's sites, with this site's key
    with pytest.raises(ConfigError, match='node config roster="/path/to/roster.json" is needed'):
        site(roster=None)
    with pytest.raises(ConfigError, match="run config roster-fingerprint is empty"):
        site(fp="")
    with pytest.raises(ConfigError, match='node config roster=".*garbage.json" is not a usable roster'):
        site(roster=str(tmp_path / "garbage.json"))
    others = Roster.of(SiteIdentity(f"site{i}") for i in range(SITES))
    others.save(tmp_path / "others.json")
    with pytest.raises(ConfigError, match=f"has fingerprint {others.fingerprint}, not the run config's roster-fingerprint {fingerprint}"):
        site(roster=str(tmp_path / "others.json"))
    with pytest.raises(ConfigError, match=r'roster=".*others.json" lists another signing key for site0 than its node config identity'):
        site(others.fingerprint, roster=str(tmp_path / "others.json"))
    four = Roster.of(SiteIdentity(f"site{i}") for i in range(4))
    four.save(tmp_path / "four.json")
    with pytest.raises(ConfigError, match=r"lists site0, site1, site2, site3; the run has clients=3 \(site0 .. site2\)"):
        site(four.fingerprint, roster=str(tmp_path / "four.json"))
    with pytest.raises(ConfigError, match="roster-fingerprint must be the roster's 64 hexadecimal digits"):
        DeploymentSettings.from_run_config({"roster-fingerprint": "abc"})
    assert DeploymentSettings.from_run_config({"roster-fingerprint": fingerprint.upper()}).roster_fingerprint == fingerprint
    # plain mode signs nothing: no identity, no roster, no fingerprint
    plain = DeploymentSettings.from_run_config({"clients": SITES, "mode": "plain"})
    assert Site(plain.config, {"partition-id": 0, "num-partitions": SITES}).client.exchange.identity is None
    assert server_roster(plain) is None


def test_server_reads_the_roster_from_the_run_config_or_beside_the_app(key_dir, tmp_path, monkeypatch):
    roster = Roster.load(key_dir / "roster.json")
    settings = DeploymentSettings.from_run_config({"clients": SITES, **_roster_settings(key_dir)})
    assert server_roster(settings) == roster
    bare = DeploymentSettings.from_run_config({"clients": SITES, "roster-fingerprint": roster.fingerprint})
    with pytest.raises(ConfigError, match='run config server-roster="/path/to/roster.json" is needed, or roster.json in the app'):
        server_roster(bare)
    with pytest.raises(ConfigError, match="run config roster-fingerprint is empty"):
        server_roster(DeploymentSettings.from_run_config({"clients": SITES}))
    wrong = DeploymentSettings.from_run_config({"clients": SITES, **_roster_settings(key_dir), "roster-fingerprint": "0" * 64})
    with pytest.raises(ConfigError, match=f'run config server-roster=".*roster.json" has fingerprint {roster.fingerprint}'):
        server_roster(wrong)
    # the app written with --roster carries it and its fingerprint; Flower installs the app under
    # $FLWR_HOME/apps, where the ServerApp finds it from the grid's run
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    grid = SimpleNamespace(run=SimpleNamespace(fab_id="torchhefl/torchhefl-app", fab_version="1.0.0", fab_hash="ab" * 32))
    installed = app_directory(grid)
    assert installed == tmp_path / "flwr" / "apps" / "torchhefl.torchhefl-app.1.0.0.abababab"
    pyproject = write_app(installed, {"clients": SITES}, roster=key_dir / "roster.json")
    run_config = tomli.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    assert run_config["roster-fingerprint"] == roster.fingerprint and run_config["server-roster"] == ""
    assert server_roster(DeploymentSettings.from_run_config(run_config), installed) == roster
    assert app_directory(SimpleNamespace()) is None and app_directory(FakeGrid({}, {})) is None
    with pytest.raises(ConfigError, match=f"has fingerprint {roster.fingerprint}, the run config says roster-fingerprint=00"):
        write_app(tmp_path / "app", {"roster-fingerprint": "0" * 64}, roster=key_dir / "roster.json")
    with pytest.raises(ConfigError, match="--roster .*missing.json: No such file"):
        write_app(tmp_path / "app", roster=tmp_path / "missing.json")


def test_a_site_with_another_roster_fails_the_hello_over_fake_grid(key_dir, tmp_path):
    """One SuperNode holds a roster other than the run config's: the run stops before any round,
    naming the site's roster file."""
    others = Roster.of(SiteIdentity(f"site{i}") for i in range(SITES))
    others.save(tmp_path / "others.json")
    run_config = {"mode": "he", "rounds": 1, "clients": SITES, "node-timeout": 5.0, "reply-timeout": 1.0, **_roster_settings(key_dir)}
    nodes = _node_configs(key_dir)
    nodes[15]["roster"] = str(tmp_path / "others.json")
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        with pytest.raises(ProtocolError, match="no SuperNode answered for site1"):
            serve(FakeGrid(run_config, nodes), DeploymentSettings.from_run_config(run_config), echo=lines.append)
    assert any("SuperNodes 15 failed the hello" in line and "others.json\" has fingerprint" in line for line in lines)


def test_hellos_must_name_every_site_once_with_one_key(key_dir):
    config = DeploymentSettings.from_run_config({"clients": SITES}).config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        fingerprint = _roster_settings(key_dir)["roster-fingerprint"]
        sites = [Site(config, node, roster_fingerprint=fingerprint) for node in _node_configs(key_dir).values()]
    hellos = {10 + i: s.hello() for i, s in enumerate(sites)}
    read = read_hellos(config, hellos)
    assert read.nodes == {"site0": 10, "site1": 11, "site2": 12}
    assert read.num_features == 30 and read.public_key == sites[0].client.exchange.public_key
    with pytest.raises(ConfigError, match="SuperNodes 10 and 13 both claim partition-id=0"):
        read_hellos(config, {**hellos, 13: hellos[10]})
    with pytest.raises(ProtocolError, match="no SuperNode answered for site2"):
        read_hellos(config, {10: hellos[10], 11: hellos[11]})
    other = sites[2].hello()
    other.config_records["torchhefl.hello"]["public-key"] = "abcd"
    with pytest.raises(ConfigError, match="the sites hold different key pairs"):
        read_hellos(config, {10: hellos[10], 11: hellos[11], 12: other})


# -- records, app file, certificates -------------------------------------------------------------


def test_records_carry_bytes_unchanged():
    blob = bytes(range(256)) * 33
    content = pack(blob)
    array = content.array_records["torchhefl"]["message"]
    assert (array.dtype, array.stype, tuple(array.shape)) == (WIRE_DTYPE, WIRE_STYPE, (len(blob),))
    assert unpack(content) == blob
    assert unpack(pack(b"")) == b""


def test_records_reject_other_content():
    with pytest.raises(MalformedMessageError, match="without a 'torchhefl' array record"):
        unpack(RecordDict())
    content = pack(b"abc")
    array = content.array_records["torchhefl"]["message"]
    array.dtype = "float32"
    with pytest.raises(MalformedMessageError, match="dtype 'float32'"):
        unpack(content)
    with pytest.raises(TypeError, match="bytes, not str"):
        pack("abc")


def test_write_app(tmp_path):
    path = write_app(tmp_path / "app", {"rounds": 4, "mode": "plain"})
    doc = tomli.loads(path.read_text())
    flwr = doc["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "torchhefl.flower.server_app:app", "clientapp": "torchhefl.flower.client_app:app"}
    assert set(flwr["config"]) == set(RUN_CONFIG_DEFAULTS)
    assert (flwr["config"]["rounds"], flwr["config"]["mode"], flwr["config"]["lr"]) == (4, "plain", 0.1)
    assert DeploymentSettings.from_run_config(flwr["config"]).config.rounds == 4
    with pytest.raises(ConfigError, match="unknown run config keys: key-dir"):
        write_app(tmp_path / "bad", {"key-dir": "/keys"})


def test_write_app_writes_the_mode_s_clip_norm_and_dp_defaults(tmp_path):
    # Flower gives the ServerApp every key of the app's table: a key left out must already hold the
    # value the mode gives it, or an app for the server's key would carry the default clip-norm
    def written(run_config):
        doc = tomli.loads(write_app(tmp_path / "app", run_config).read_text())
        config = doc["tool"]["flwr"]["app"]["config"]
        return config, DeploymentSettings.from_run_config(config).config

    config, train = written({"key-holder": "server"})
    assert config["clip-norm"] == 0.0 and train.clip_norm is None
    config, train = written({"mode": "plain", "epsilon": 1.0})
    assert (config["lr"], config["clip-norm"]) == (DP_LR, DP_CLIP_NORM) and (train.lr, train.clip_norm) == (DP_LR, DP_CLIP_NORM)
    config, _ = written({"mode": "plain", "epsilon": 1.0, "lr": 0.2, "clip-norm": 2.0})
    assert (config["lr"], config["clip-norm"]) == (0.2, 2.0)
    assert written({})[0]["clip-norm"] == TrainConfig().clip_norm


def test_certificates(tmp_path):
    paths = generate_certificates(tmp_path, ["superlink.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.5")}
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (paths.ca_key, paths.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    with pytest.raises(ValueError, match="days must be at least 1"):
        generate_certificates(tmp_path, days=0)


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_multiclass_mlp_over_fake_grid_equals_simulation(mode, key_dir, tmp_path):
    """The run config names the model (mlp, hidden 16) and a bundled 10-class data set; the server
    learns the classes from the hellos and builds the same model as the simulation."""
    run_config = {
        "mode": mode, "rounds": 2, "clients": SITES, "seed": 1, "data": "digits", "model": "mlp", "hidden": "16",
        "node-timeout": 5.0, "reply-timeout": 5.0, **_roster_settings(key_dir),
    }
    grid = FakeGrid(run_config, _node_configs(key_dir, **{"model-out": str(tmp_path / "model.pt")}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        summary = serve(grid, DeploymentSettings.from_run_config(run_config), echo=lambda line: None)
    config = TrainConfig(mode=mode, rounds=2, clients=SITES, seed=1, data="digits", model="mlp", hidden=[16],
                         extra={"key_dir": str(key_dir), "allow_insecure_keys": True})
    expected, results = _simulate(config)
    saved = torch.load(tmp_path / "model.pt")
    assert list(saved) == list(expected) and saved["layers.2.weight"].shape == (10, 16)
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)
    assert summary["test_accuracy"] == pytest.approx(results[-1]["test_accuracy"])
    assert summary["test_f1"] == pytest.approx(results[-1]["test_f1"])
    assert sum(summary[f"test_count_{k}"] for k in range(10)) == sum(results[-1][f"test_count_{k}"] for k in range(10))


def _csv_site(config, tmp_path, index, labels):
    path = tmp_path / f"site{index}.csv"
    path.write_text("a,b,y\n" + "".join(f"{i % 7},{i % 5},{labels[i % len(labels)]}\n" for i in range(30)))
    return Site(config, {"partition-id": index, "num-partitions": SITES, "data": str(path), "label": "y"})


def test_sites_must_label_their_rows_alike(tmp_path):
    """Each site maps its own label values to 0..K-1 in sorted order; the hello carries K and a
    digest of the values, and the server refuses sites whose labels differ (the same index would
    mean different classes)."""
    config = DeploymentSettings.from_run_config({"clients": SITES, "mode": "plain"}).config
    alike = {10 + i: _csv_site(config, tmp_path, i, "xyz").hello() for i in range(SITES)}
    read = read_hellos(config, alike)
    assert read.num_classes == 3 and read.num_features == 2
    other_values = {**alike, 12: _csv_site(config, tmp_path, 2, "xyw").hello()}
    with pytest.raises(ConfigError, match="^the sites' labels differ: the same number of classes, but other label values"):
        read_hellos(config, other_values)
    fewer = {**alike, 12: _csv_site(config, tmp_path, 2, "xy").hello()}
    with pytest.raises(ConfigError, match="^the sites' labels differ: 2 vs 3 classes"):
        read_hellos(config, fewer)
    for bad in (1, "3", 10**9, True):
        hello = _csv_site(config, tmp_path, 2, "xyz").hello()
        hello.config_records["torchhefl.hello"]["num-classes"] = bad
        with pytest.raises(MalformedMessageError, match="num-classes in"):
            read_hellos(config, {**alike, 12: hello})
    hello = _csv_site(config, tmp_path, 2, "xyz").hello()
    hello.config_records["torchhefl.hello"]["classes"] = "not a digest"
    with pytest.raises(MalformedMessageError, match="SHA-256 classes digest"):
        read_hellos(config, {**alike, 12: hello})
    # the server's key cannot train on more than 2 classes: a site with 3 refuses to start
    hem = DeploymentSettings.from_run_config({"clients": SITES, "key-holder": "server"}).config
    with pytest.raises(ConfigError, match="softmax regression on 3 classes cannot train with --key-holder server"):
        _csv_site(hem, tmp_path, 0, "xyz")


def test_run_config_model_hidden_and_data():
    config = DeploymentSettings.from_run_config({"model": "mlp", "hidden": "64, 32", "data": "digits"}).config
    assert (config.model, config.hidden, config.data) == ("mlp", [64, 32], "digits")
    assert DeploymentSettings.from_run_config({"hidden": 8}).config.hidden == [8]
    assert DeploymentSettings.from_run_config({"data": ""}).config.data is None
    with pytest.raises(ConfigError, match="run config hidden must be layer sizes"):
        DeploymentSettings.from_run_config({"hidden": "64;32"})
    with pytest.raises(ConfigError, match="run config data must name a data set bundled with scikit-learn"):
        DeploymentSettings.from_run_config({"data": "/data/site.csv"})
    with pytest.raises(ConfigError, match="--model must be one of"):
        DeploymentSettings.from_run_config({"model": "resnet"})
    with pytest.raises(ConfigError, match="--model mlp cannot train with --key-holder server"):
        DeploymentSettings.from_run_config({"model": "mlp", "key-holder": "server"})


# -- sites with their own CSV tables: text columns and gaps --------------------------------------------------


@pytest.fixture(scope="module")
def site_tables(tmp_path_factory):
    """Three sites' CSVs (WDBC's first 8 measurements, a text column whose categories differ by
    site, 8 missing cells each) and the server's own held-out CSV."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(bunch.data[:, :8], columns=bunch.feature_names[:8])
    frame["diagnosis"] = np.where(bunch.target == 0, "M", "B")
    frame["ward"] = rng.choice(["a", "b", "c"], size=len(frame))
    folder = tmp_path_factory.mktemp("tables")
    paths = []
    for i in range(SITES):
        part = frame.iloc[i : len(frame) - 69 : SITES].copy()
        if i == 2:
            part.loc[part.index[:5], "ward"] = "d"  # a category only site 2 has
        for j in range(8):
            part.iat[int(rng.integers(len(part))), j % 4] = np.nan
        paths.append(folder / f"site{i}.csv")
        part.to_csv(paths[-1], index=False)
    frame.iloc[-69:].to_csv(folder / "server.csv", index=False)
    return paths, folder / "server.csv"


def _table_reference(config: TrainConfig, paths):
    """The same run with each site's table encoded and filled in plaintext from the pooled
    summaries (agree_encoding), assembled in process."""
    from torchhefl.data import agree_encoding, load_table
    from torchhefl.data.dataset import train_test_split
    from torchhefl.federated.simulation import assemble, make_model

    splits = [train_test_split(load_table(str(p), "diagnosis"), test_size=config.test_size, seed=config.seed) for p in paths]
    encoder = agree_encoding([train for train, _ in splits], impute=config.impute)
    trains = [encoder.transform(train) for train, _ in splits]
    tests = [encoder.transform(test) for _, test in splits]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        sim = assemble(
            config, model=make_model(config, encoder.num_features, 2), sites=[(t.X, t.y) for t in trains],
            test=(np.concatenate([t.X for t in tests]), np.concatenate([t.y for t in tests])), num_classes=2,
        )
        sim.server.setup()
        for r in range(1, config.rounds + 1):
            sim.server.run_round(r)
    return encoder, sim.final_state()


@pytest.mark.parametrize("impute", ["mean", "median"])
def test_sites_with_their_own_tables_agree_a_vocabulary_and_fill_their_gaps(impute, site_tables, key_dir, tmp_path):
    """Each SuperNode reads its own CSV (a text column, gaps). The hellos carry each site's category
    sets; the server sends back their union; the sites fill their gaps from the federated mean or
    median summed under the sites' key. The model equals the in-process run on the same rows filled
    in plaintext from the pooled summaries."""
    paths, _ = site_tables
    run_config = {
        "mode": "he", "rounds": 2, "clients": SITES, "seed": 1, "impute": impute, "node-timeout": 5.0, "reply-timeout": 5.0,
        **_roster_settings(key_dir),
    }
    nodes = _node_configs(key_dir, label="diagnosis", **{"model-out": str(tmp_path / "model.pt")})
    for i, node in enumerate(nodes.values()):
        node["data"] = str(paths[i])
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        serve(FakeGrid(run_config, nodes), DeploymentSettings.from_run_config(run_config), echo=lines.append)
    assert "vocabulary: 'ward' (4 categories); 12 features" in lines
    config = TrainConfig(mode="he", rounds=2, clients=SITES, seed=1, impute=impute,
                         extra={"key_dir": str(key_dir), "allow_insecure_keys": True})
    encoder, expected = _table_reference(config, paths)
    assert encoder.vocabulary == {"ward": ["a", "b", "c", "d"]} and encoder.missing > 0
    saved = torch.load(tmp_path / "model.pt")
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)


def test_hem_sites_with_their_own_tables_train_the_reference_model(site_tables, key_dir, tmp_path):
    """The same under the server's key: the imputation and median passes are masked, the server
    reads their sums, and evaluates on its own held-out CSV, encoded with the sites' vocabulary."""
    paths, server_csv = site_tables
    run_config = {
        "mode": "he", "key-holder": "server", "rounds": 2, "clients": SITES, "seed": 1, "impute": "median",
        "node-timeout": 5.0, "reply-timeout": 5.0, "run-dir": str(tmp_path / "run"), "server-key-dir": str(key_dir),
        "server-allow-insecure-keys": True, "server-test-data": str(server_csv), "server-test-label": "diagnosis",
        **_roster_settings(key_dir),
    }
    nodes = {n: {k: v for k, v in c.items() if k != "key-dir"} for n, c in _node_configs(key_dir, label="diagnosis").items()}
    for i, node in enumerate(nodes.values()):
        node["data"] = str(paths[i])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        summary = serve(FakeGrid(run_config, nodes), DeploymentSettings.from_run_config(run_config), echo=lambda line: None)
    config = TrainConfig(mode="he", key_holder="server", clip_norm=None, rounds=2, clients=SITES, seed=1, impute="median",
                         extra={"key_dir": str(key_dir), "allow_insecure_keys": True})
    encoder, expected = _table_reference(config, paths)
    saved = torch.load(tmp_path / "run" / "model.pt")
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)
    assert 0.85 < summary["test_accuracy"] <= 1.0


def test_a_site_refuses_a_vocabulary_that_leaves_out_its_categories(site_tables, tmp_path):
    from torchhefl.flower.deployment import VOCABULARY_INS

    paths, _ = site_tables
    config = DeploymentSettings.from_run_config({"clients": SITES, "mode": "plain"}).config
    site = Site(config, {"partition-id": 2, "num-partitions": SITES, "data": str(paths[2]), "label": "diagnosis"})
    table = json.loads(site.hello().config_records["torchhefl.hello"]["table"])
    assert table["categories"] == {"ward": ["a", "b", "c", "d"]} and "diagnosis" not in table["columns"]
    with pytest.raises(ProtocolError, match="before the vocabulary"):
        site.handle(encode_request(STATS_INS, {}))
    with pytest.raises(MalformedMessageError, match="leaves out categories this site has"):
        site.handle(encode_request(VOCABULARY_INS, {"vocabulary": {"ward": ["a", "b", "c"]}}))
    with pytest.raises(MalformedMessageError, match="exactly this site's text columns"):
        site.handle(encode_request(VOCABULARY_INS, {"vocabulary": {}}))
    site.handle(encode_request(VOCABULARY_INS, {"vocabulary": {"ward": ["a", "b", "c", "d", "e"]}}))
    assert site.client.X.shape[1] == 8 + 5
    rebuilt = Site(config, {"partition-id": 2, "num-partitions": SITES, "data": str(paths[2]), "label": "diagnosis"}, site.state)
    assert rebuilt.client is not None and rebuilt.client.X.shape[1] == 13  # the agreed vocabulary, from the node state
    client = rebuilt.client
    rebuilt.handle(encode_request(VOCABULARY_INS, {"vocabulary": {"ward": ["a", "b", "c", "d", "e"]}}))
    assert rebuilt.client is client  # the same vocabulary again: nothing rebuilt, nothing lost
    with pytest.raises(ProtocolError, match="already agreed on another vocabulary"):
        rebuilt.handle(encode_request(VOCABULARY_INS, {"vocabulary": {"ward": ["a", "b", "c", "d"]}}))


# -- your own parts on Flower --------------------------------------------------------------------------------


class _TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.head(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _top3(logits, targets):
    return (logits.topk(3, dim=1).indices == targets.reshape(-1, 1)).any(dim=1).sum()


@pytest.mark.parametrize("mode", ["plain", "he"])
def test_your_own_parts_over_flower_train_what_federation_trains(mode, key_dir, tmp_path):
    """A CNN, each site's own image tensors, cross-entropy, SGD with momentum and a metric of your
    own, deployed with flower_apps: the same model and figures as Federation in process."""
    from torch.utils.data import TensorDataset

    from torchhefl.data import load_digits, partition_iid
    from torchhefl.data.dataset import train_test_split
    from torchhefl.federated import Federation
    from torchhefl.federated.simulation import _test_parts
    from torchhefl.flower.parts import FlowerParts, flower_apps

    train, test = train_test_split(load_digits(), test_size=0.2, seed=0)
    parts = partition_iid(len(train), SITES, seed=0)

    def images(X, y):
        return TensorDataset(torch.tensor(X, dtype=torch.float64).reshape(-1, 1, 8, 8), torch.tensor(y))

    sites = [images(train.X[i], train.y[i]) for i in parts]
    common = dict(model=lambda: _TinyCNN().double(), loss=torch.nn.CrossEntropyLoss(),
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), metrics={"top3": _top3})
    fed = Federation(sites=sites, test=images(test.X, test.y), mode=mode, rounds=2, seed=1, key_bits=512,
                     clip_norm=None, extra={"allow_insecure_keys": True, "key_dir": str(key_dir)}, **common)
    history = fed.fit(progress=False)
    shares = _test_parts(fed.config, len(test))  # each site evaluates the share Federation gives it

    def site_data(node_config):
        i = node_config["partition-id"]
        return sites[i], images(test.X[shares[i]], test.y[shares[i]])

    own = FlowerParts(site_data=site_data, num_classes=10, **common)
    client, _ = flower_apps(own)
    run_config = {"mode": mode, "rounds": 2, "clients": SITES, "seed": 1, "clip-norm": 0.0, "node-timeout": 5.0,
                  "reply-timeout": 5.0, **_roster_settings(key_dir)}
    grid = FakeGrid(run_config, _node_configs(key_dir, **{"model-out": str(tmp_path / "model.pt")}), app=client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyWarning)
        summary = serve(grid, DeploymentSettings.from_run_config(run_config), echo=lambda line: None, parts=own)
    saved = torch.load(tmp_path / "model.pt")
    for name, tensor in fed.state_dict().items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=1e-6)
    for key in ("test_accuracy", "test_f1", "test_top3"):
        assert summary[key] == pytest.approx(history[-1][key], abs=1e-9), key


def test_the_server_key_mode_refuses_parts_it_cannot_train_on_ciphertexts():
    from torchhefl.flower.parts import FlowerParts

    config = DeploymentSettings.from_run_config({"clients": SITES, "mode": "he", "key-holder": "server"}).config
    own = FlowerParts(model=_TinyCNN, site_data=lambda node: ((np.zeros((4, 1, 8, 8)), np.arange(4)),) * 2, num_classes=10,
                      loss=torch.nn.CrossEntropyLoss())
    with pytest.raises(ConfigError, match="server"):
        Site(config, {"partition-id": 0, "num-partitions": SITES}, parts=own)
    with pytest.raises(ConfigError, match="metric name"):
        FlowerParts(model=_TinyCNN, site_data=lambda node: None, metrics={"loss": _top3})
