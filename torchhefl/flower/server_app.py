"""The Flower ServerApp: ``torchhefl.flower.server_app:app``.

It waits for one SuperNode per site, learns which node runs which site, and drives the same
:class:`~torchhefl.federated.Server` the simulation uses over a :class:`FlowerTransport`. In the
modes whose sites sign, it reads the roster first (run config ``server-roster``, else
``roster.json`` in the app directory Flower installed; :mod:`torchhefl.flower.identities`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from torchhefl.exceptions import ProtocolError
from torchhefl.federated.recorder import RunRecorder
from torchhefl.federated.drive import drive, summarize
from torchhefl.federated.simulation import privacy_summary
from torchhefl.flower.deployment import DeploymentSettings, build_server, read_hellos, send_vocabulary, server_roster
from torchhefl.flower.records import HELLO_TYPE
from torchhefl.flower.transport import DEFAULT_POLL_INTERVAL, FlowerTransport, exchange

__all__ = ["app", "app_directory", "make_server_app", "serve", "wait_for_nodes"]


def make_server_app(parts=None) -> ServerApp:
    """A ServerApp that trains the run config's model, or ``parts``
    (:class:`~torchhefl.flower.parts.FlowerParts`)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, DeploymentSettings.from_run_config(context.run_config), parts=parts)

    return server_app


app = make_server_app()


def app_directory(grid: Grid) -> Path | None:
    """Where Flower installed this run's app (``$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>``),
    from the run the grid serves; ``None`` for a grid that names no app (tests)."""
    try:
        run = grid.run
    except (AttributeError, NotImplementedError):
        return None
    if not getattr(run, "fab_id", "") or not getattr(run, "fab_hash", ""):
        return None
    from flwr.common.config import get_project_dir

    try:
        return get_project_dir(run.fab_id, run.fab_version, run.fab_hash)
    except ValueError:  # not a publisher/name app id
        return None


def wait_for_nodes(grid: Grid, count: int, *, timeout: float, poll_interval: float = 1.0) -> list[int]:
    """The ids of the connected SuperNodes once there are ``count`` of them (``ProtocolError`` after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() >= deadline:
            raise ProtocolError(f"only {len(nodes)} of {count} SuperNodes connected within {timeout:g}s")
        time.sleep(poll_interval)


def serve(grid: Grid, settings: DeploymentSettings, *, echo: Callable[[str], None] | None = None, parts=None) -> dict:
    """Run ``settings.config`` over ``grid`` (with your own ``parts``, a
    :class:`~torchhefl.flower.parts.FlowerParts`, if given); returns the last round's metrics with byte totals."""
    echo = echo or (lambda line: log(INFO, line))
    config = settings.config
    roster = server_roster(settings, app_directory(grid))  # before anything waits: a wrong roster stops the run at once
    if roster is not None:
        echo(f"roster: {', '.join(roster.sites)} (fingerprint {roster.fingerprint[:16]}...)")
    nodes = wait_for_nodes(grid, config.clients, timeout=settings.node_timeout)
    replies = exchange(
        grid, {str(n): (n, HELLO_TYPE, RecordDict()) for n in nodes}, timeout=settings.reply_timeout, poll_interval=DEFAULT_POLL_INTERVAL
    )
    failed = [name for name, reply in replies.items() if reply.has_error()]
    if failed:
        echo(f"SuperNodes {', '.join(failed)} failed the hello: {replies[failed[0]].error.reason}")
    hellos = read_hellos(config, {int(name): r.content for name, r in replies.items() if not r.has_error()})
    echo("sites: " + ", ".join(f"{cid} on node {node}" for cid, node in hellos.nodes.items()))
    transport = FlowerTransport(grid, hellos.nodes, timeout=settings.reply_timeout)
    send_vocabulary(transport, hellos)
    if hellos.vocabulary is not None:
        echo("vocabulary: " + (", ".join(f"{c!r} ({len(v)} categories)" for c, v in hellos.vocabulary.items()) or "no text column")
             + f"; {hellos.num_features} features")
    server = build_server(config, transport, hellos, settings, roster=roster, parts=parts)
    recorder = RunRecorder(settings.run_dir, config.to_dict(), list(hellos.nodes), num_classes=hellos.num_classes,
                           metrics=list(server.metrics)) if settings.run_dir else None
    if recorder is not None:
        recorder.start()
    server.setup()
    last, totals = drive(server.run_round, first=1, rounds=config.rounds, recorder=recorder, echo=echo)
    summary = summarize(last, totals, config.rounds)
    summary.update(privacy_summary(config, last))
    if "privacy" in summary:
        echo(summary["privacy"])
    if recorder is not None:
        recorder.finish(server.global_state(), summary)
    return summary
