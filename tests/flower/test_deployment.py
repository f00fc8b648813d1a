"""End to end on Flower's deployment engine: a TLS SuperLink and three SuperNodes on 127.0.0.1.

The same training as the in-process simulation with the same seed must come out of it: the final
model each site decrypted (or, with the server's key, the server's model) equals the simulation's
to 1e-6. The sites' signing keys and roster come from ``python -m train.keys identities``; each
SuperNode names its own in its node config, and the ServerApp reads the roster beside the app.
Plain mode runs through the same ServerApp/ClientApp code in ``test_adapters.py`` (a second
deployment here would double the runtime: Flower polls, and every message starts a ClientApp
process, some 20 s per exchange on two cores).
"""

from __future__ import annotations

import csv
import re
import shutil

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from torchhefl.federated import TrainConfig, build  # noqa: E402
from torchhefl.federated.messages import FIT_RES, decode_request  # noqa: E402
from torchhefl.flower.app import write_app  # noqa: E402
from torchhefl.flower.deployment import initial_model  # noqa: E402
from torchhefl.secure import generate_keypair  # noqa: E402
from train.keys import main as keys_main  # noqa: E402

from tests.flower.federation import LocalFederation  # noqa: E402

pytestmark = pytest.mark.flower

SITES = 3
RUN_TIMEOUT = 300.0

if shutil.which("flower-superlink") is None:  # pragma: no cover - flwr without its scripts on PATH
    pytest.skip("flower-superlink is not on PATH", allow_module_level=True)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory):
    """The sites' shared 2048-bit key pair, as ``python -m train.keys generate`` writes it (with the
    server's key, the server's)."""
    path = tmp_path_factory.mktemp("keys")
    public_key, private_key = generate_keypair(2048)
    public_key.save(path / "public.json")
    private_key.save(path / "private.json")
    return path


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    """site<i>/identity.json and roster.json, as ``python -m train.keys identities`` writes them."""
    path = tmp_path_factory.mktemp("identities") / "keys"
    assert keys_main(["identities", "--clients", str(SITES), "--out", str(path)]) == 0
    return path


def _node_configs(key_dir, identities, **extra) -> list[str]:
    tail = "".join(f' {k}="{v}"' for k, v in extra.items())
    return [
        f'partition-id={i} num-partitions={SITES} key-dir="{key_dir}" identity="{identities / f"site{i}" / "identity.json"}" '
        f'roster="{identities / "roster.json"}"' + tail.replace("{i}", str(i))
        for i in range(SITES)
    ]


@pytest.fixture(scope="module")
def federation(tmp_path_factory, key_dir, identities):
    root = tmp_path_factory.mktemp("federation")
    fed = LocalFederation(root, _node_configs(key_dir, identities, **{"model-out": root / "models" / "site{i}.pt"}))
    try:
        fed.start()
        yield fed
    finally:
        fed.stop()
    assert all(p.poll() is not None for p in fed.procs), "a Flower process outlived stop()"


class _Counting:
    """In process: a site's answers, counted by kind."""

    def __init__(self, client) -> None:
        self.client, self.kinds = client, []

    def handle(self, request: bytes) -> bytes:
        reply = self.client.handle(request)
        self.kinds.append(decode_request(reply).kind)
        return reply


def _simulate(config: TrainConfig, count: str | None = None):
    """The simulation's final state and round results (and, with ``count``, that site's answers by kind)."""
    sim = build(config)
    if count is not None:
        counted = sim.transport.clients[count] = _Counting(sim.transport.clients[count])
    sim.server.setup()
    results = [sim.server.run_round(rnd) for rnd in range(1, config.rounds + 1)]
    return sim.final_state(), results, (counted.kinds if count is not None else None)


def _write_app(app, run_config: dict, identities) -> None:
    # the roster goes into the app as roster.json (the ServerApp reads it there) with its fingerprint
    write_app(app, {"clients": SITES, "node-timeout": 60.0, **run_config}, roster=identities / "roster.json")


def _assert_trained(config: TrainConfig, expected) -> None:
    """The model moved away from its seeded initial value."""
    initial = initial_model(config, expected["weight"].shape[1]).state_dict()
    assert max(float((expected[k] - initial[k]).abs().max()) for k in expected) > 1e-3


def test_he_clients_key_over_flower_matches_simulation(federation, key_dir, identities, tmp_path):
    config = TrainConfig(mode="he", key_holder="clients", rounds=2, clients=SITES, seed=0, extra={"key_dir": str(key_dir)})
    models = federation.root / "models"
    shutil.rmtree(models, ignore_errors=True)
    app = tmp_path / "app"
    _write_app(app, {"mode": "he", "key-holder": "clients", "rounds": 2, "seed": 0, "reply-timeout": 120.0}, identities)
    result = federation.run(app, timeout=RUN_TIMEOUT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out + federation.log_tail()
    assert re.search(rf"round +{config.rounds}/{config.rounds} ", out), out + federation.log_tail()

    expected, _, _ = _simulate(config)
    for i in range(SITES):
        path = models / f"site{i}.pt"
        assert path.is_file(), f"site{i} saved no model\n" + out + federation.log_tail()
        state = torch.load(path)
        assert list(state) == list(expected)
        for name, tensor in expected.items():
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-6)
    _assert_trained(config, expected)


def test_hem_over_flower_completes_a_round_with_a_site_killed_after_its_upload(key_dir, identities, tmp_path):
    """--key-holder server with secure aggregation: site2's SuperNode (and its ClientApp) is killed
    once its masked upload has reached the SuperLink. It never signs the survivor set; the two
    others' shares unmask the sum over all three uploads in the one attempt, so the server's model
    is the simulation's with every site."""
    config = TrainConfig(mode="he", key_holder="server", clip_norm=None, rounds=1, clients=SITES, seed=0,
                         extra={"key_dir": str(key_dir)})
    expected, _, answers = _simulate(config, count="site2")
    # SuperNode 2 answers as the simulation's site2 does, one Flower message per answer, after its
    # hello: the set-up (server-key keys and peers, statistics, standardisation), secure
    # aggregation's keys and shares, a refresh request per refresh, and the upload. Its log counts
    # the messages it sent: so many, and its upload is out
    sent_by_upload = 1 + answers.index(FIT_RES) + 1
    assert answers[:6] == ["hem_keys_res", "hem_peers_res", "stats_res", "standardize_res", "secagg_keys_res", "secagg_shares_res"]

    fed = LocalFederation(tmp_path / "federation", _node_configs(key_dir, identities))
    app = tmp_path / "app"
    # the server's key pair from key_dir (on the server's machine); reply-timeout bounds the wait
    # for the killed site's signature (a live site answers in some 20 s on two cores)
    _write_app(app, {"mode": "he", "key-holder": "server", "rounds": 1, "seed": 0, "reply-timeout": 60.0,
                     "server-key-dir": str(key_dir), "run-dir": str(tmp_path / "run")}, identities)
    try:
        fed.start()
        run = fed.submit(app)
        try:
            fed.wait_for_log(2, "Sent successfully", sent_by_upload, timeout=RUN_TIMEOUT)
            fed.kill_node(2)
            stdout, stderr = run.communicate(timeout=RUN_TIMEOUT)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
        out = stdout + stderr
        assert run.returncode == 0, out + fed.log_tail()
        assert re.search(r"round +1/1 ", out), out + fed.log_tail()
        # it sent nothing after its upload: the survivor set was signed by site0 and site1 alone
        assert fed.node_log(2).read_text(errors="replace").count("Sent successfully") == sent_by_upload
    finally:
        fed.stop()
    assert all(p.poll() is not None for p in fed.procs), "a Flower process outlived stop()"

    with (tmp_path / "run" / "metrics.csv").open() as f:
        (row,) = csv.DictReader(f)
    assert row["clients"] == str(SITES) and row["dropped"] == ""  # its upload is in the sum
    state = torch.load(tmp_path / "run" / "model.pt")
    assert list(state) == list(expected)
    for name, tensor in expected.items():  # a refresh rounds value + random mask: runs differ by ~1e-10
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-6)
    _assert_trained(config, expected)
