"""A local Flower federation for tests: one SuperLink and N SuperNodes on 127.0.0.1, with TLS.

Every process gets its own ``FLWR_HOME``, telemetry and update checks are off, and the
SuperLink does not install app dependencies at run time (the test environment has them).
Each process is started in its own session; :meth:`LocalFederation.stop` ends exactly those
process groups, by the PIDs this object started, and :meth:`LocalFederation.kill_node` one
SuperNode's group (with the ClientApp it may be running), as a site's machine that goes down.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from torchhefl.flower.certificates import generate_certificates

#: how long a stopped process group gets to exit after SIGTERM before SIGKILL
_STOP_GRACE = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",
        PYTHONUNBUFFERED="1",
    )
    home.mkdir(parents=True, exist_ok=True)
    return env


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the SuperLink did not listen on 127.0.0.1:{port} within {timeout:g}s")


class LocalFederation:
    """Start with :meth:`start`, submit runs with :meth:`run`, always :meth:`stop` (in a ``finally``)."""

    def __init__(self, root: Path, node_configs: list[str]) -> None:
        self.root = Path(root)
        self.node_configs = node_configs
        self.certs = generate_certificates(self.root / "certs")
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.nodes: list[subprocess.Popen] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=self.root, env=flower_env(self.root / "home" / name), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def start(self, timeout: float = 60.0) -> None:
        link = self._spawn(
            "superlink",
            [
                "flower-superlink",
                "--ssl-ca-certfile", str(self.certs.ca_cert),
                "--ssl-certfile", str(self.certs.server_cert),
                "--ssl-keyfile", str(self.certs.server_key),
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        _wait_for_port(self.port, timeout, link, self.logs[-1])
        for i, node_config in enumerate(self.node_configs):
            node = self._spawn(
                f"supernode{i}",
                [
                    "flower-supernode",
                    "--root-certificates", str(self.certs.ca_cert),
                    "--superlink", f"127.0.0.1:{self.port}",
                    "--host", "127.0.0.1",
                    "--port", str(free_port()),
                    "--max-wait-time", str(int(timeout)),
                    "--node-config", node_config,
                ],
            )
            self.nodes.append(node)
        # the CLI's own FLWR_HOME, with a TLS connection to this SuperLink
        cli_home = self.root / "home" / "cli"
        cli_home.mkdir(parents=True, exist_ok=True)
        (cli_home / "config.toml").write_text(
            '[superlink]\ndefault = "local-tls"\n\n[superlink.local-tls]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.certs.ca_cert}"\n',
            encoding="utf-8",
        )

    def run(self, app_dir: Path, timeout: float) -> subprocess.CompletedProcess:
        """``flwr run APP local-tls --stream``: returns when the run has finished (or raises on timeout)."""
        return subprocess.run(
            ["flwr", "run", str(app_dir), "local-tls", "--stream"],
            cwd=app_dir, env=flower_env(self.root / "home" / "cli"), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )

    def submit(self, app_dir: Path) -> subprocess.Popen:
        """``flwr run APP local-tls --stream`` in the background (text pipes): wait with ``communicate``."""
        return subprocess.Popen(
            ["flwr", "run", str(app_dir), "local-tls", "--stream"],
            cwd=app_dir, env=flower_env(self.root / "home" / "cli"), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )

    def node_log(self, index: int) -> Path:
        return self.root / f"supernode{index}.log"

    def wait_for_log(self, index: int, text: str, count: int, *, timeout: float, poll: float = 0.05) -> None:
        """Return once SuperNode ``index``'s log holds ``text`` ``count`` times (``TimeoutError`` after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        log = self.node_log(index)
        while time.monotonic() < deadline:
            if log.exists() and log.read_text(errors="replace").count(text) >= count:
                return
            if self.nodes[index].poll() is not None:
                raise RuntimeError(f"SuperNode {index} exited with {self.nodes[index].returncode}")
            time.sleep(poll)
        raise TimeoutError(f"SuperNode {index}'s log did not hold {text!r} {count} times within {timeout:g}s")

    def kill_node(self, index: int) -> None:
        """SIGKILL SuperNode ``index``'s process group, the ClientApp it may be running included."""
        node = self.nodes[index]
        _signal_group(node.pid, signal.SIGKILL)
        node.wait(timeout=10)

    def stop(self) -> None:
        """End every process group this federation started (SIGTERM, then SIGKILL after a grace period)."""
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # the group may still hold children (SuperExec, ServerApp, ClientApp processes)
            _signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs if log.exists())


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
