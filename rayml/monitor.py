"""`rayml monitor`: a real Prometheus (Debian's ``prometheus`` binary) scraping a running Ray cluster.

The config is ``cluster/monitoring/prometheus.yml`` with two things rewritten: the file service-discovery path
and the rule paths (made absolute). Targets come from, in order:

1. ``--sd-file``: a Prometheus file_sd JSON, e.g. Ray's own on the head node;
2. ``RAY_ADDRESS`` set: the alive nodes of that cluster (``ray.nodes()``: address + metrics export port), written
   to a file_sd JSON in the data directory and refreshed while Prometheus runs, so new nodes get scraped;
3. Ray's service-discovery file of a cluster on this machine (``/tmp/ray/prom_metrics_service_discovery.json``,
   kept current by Ray's head node: every node's metrics port, the dashboard's and the autoscaler's).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from rayml.artifacts import write_json
from rayml.errors import RaymlError

RAY_SD_FILE = Path("/tmp/ray/prom_metrics_service_discovery.json")
TARGETS_FILE = "ray_targets.json"
CONFIG_FILE = "prometheus.yml"


def monitoring_dir() -> Path:
    """``cluster/monitoring`` of the rayml checkout this module runs from."""
    path = Path(__file__).resolve().parents[1] / "cluster" / "monitoring"
    if not (path / CONFIG_FILE).is_file():
        raise RaymlError(
            f"{path / CONFIG_FILE} not found: rayml monitor needs the cluster/monitoring folder of a rayml checkout "
            "(install rayml with `pip install -e .` from the repository, or pass --config-dir)"
        )
    return path


def render_config(config_dir: Path, sd_file: Path, scrape_interval: str) -> dict[str, Any]:
    """The Prometheus config of ``config_dir``/prometheus.yml, scraping the targets in ``sd_file``."""
    config = yaml.safe_load((config_dir / CONFIG_FILE).read_text())
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str((config_dir / rule).resolve()) for rule in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        for discovery in job.get("file_sd_configs", []):
            discovery["files"] = [str(sd_file)]
    return config


def node_targets(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd entries for the metrics export port of every alive node in ``ray.nodes()``'s output."""
    targets = []
    for node in nodes:
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            targets.append(f"{node['NodeManagerAddress']}:{port}")
    return [{"labels": {"job": "ray"}, "targets": sorted(targets)}]


class Prometheus:
    """One Prometheus server process this code started (and is the only one to stop)."""

    def __init__(self, config: dict[str, Any], data_dir: Path, listen: str = "127.0.0.1:9090",
                 binary: str | None = None) -> None:
        self.binary = binary or shutil.which("prometheus")
        if self.binary is None:
            raise RaymlError("the `prometheus` binary was not found on PATH. Install it (Debian: "
                             "`apt-get install -y prometheus`) or pass --prometheus PATH")
        self.data_dir = data_dir
        self.listen = listen
        self.url = f"http://{listen}"
        self.config_path = data_dir / CONFIG_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        log = open(self.data_dir / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
             f"--web.listen-address={self.listen}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RaymlError(f"prometheus exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RaymlError(f"prometheus did not become ready at {self.url} in {timeout_s:g} s: {self.log_tail()}")

    def query(self, expr: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """An instant query through the HTTP API; raises RaymlError on an error answer."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=timeout_s)
        body = answer.json()
        if answer.status_code != 200 or body.get("status") != "success":
            raise RaymlError(f"query {expr!r} failed ({answer.status_code}): {body.get('error', body)}")
        return body["data"]["result"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 2000) -> str:
        path = self.data_dir / "prometheus.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _cluster_targets(sd_file: Path) -> None:
    import ray

    write_json(sd_file, node_targets(ray.nodes()))


def serve_monitor(
    data_dir: Path,
    *,
    listen: str,
    scrape_interval: str,
    sd_file: Path | None = None,
    config_dir: Path | None = None,
    binary: str | None = None,
    refresh_s: float = 30.0,
) -> int:
    """Start Prometheus against the running cluster and keep it up until SIGINT/SIGTERM."""
    refresh = False
    if sd_file is None and os.environ.get("RAY_ADDRESS"):
        import ray

        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        sd_file, refresh = data_dir / TARGETS_FILE, True
        data_dir.mkdir(parents=True, exist_ok=True)
        _cluster_targets(sd_file)
    elif sd_file is None:
        if not RAY_SD_FILE.is_file():
            raise RaymlError(
                f"no running Ray cluster found: {RAY_SD_FILE} does not exist. Start one (`rayml serve ...`, "
                "`ray start --head`), set RAY_ADDRESS to a remote cluster, or pass --sd-file"
            )
        sd_file = RAY_SD_FILE
    server = Prometheus(render_config(config_dir or monitoring_dir(), sd_file.resolve(), scrape_interval),
                        data_dir, listen, binary)
    server.start()
    print(f"Prometheus:  {server.url}  (targets: {server.url}/targets, alerts: {server.url}/alerts)\n"
          f"  scraping the targets in {sd_file}{' (refreshed from the cluster)' if refresh else ''}\n"
          "  rayml metrics: ray_rayml_serve_*, ray_rayml_train_*, ray_rayml_data_*, ray_rayml_ingest_*\n"
          "  Grafana: provision cluster/monitoring/grafana/, or `rayml dashboards push --url URL --token TOKEN`",
          flush=True)
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _frame: stopping.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        next_refresh = time.monotonic() + refresh_s
        while not stopping and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
            if refresh and time.monotonic() >= next_refresh:
                _cluster_targets(sd_file)
                next_refresh = time.monotonic() + refresh_s
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    if not stopping:
        print(f"prometheus exited: {server.log_tail()}")
        return 1
    return 0


def main(args: Any) -> int:
    return serve_monitor(
        Path(args.data_dir), listen=args.listen, scrape_interval=args.scrape_interval,
        sd_file=Path(args.sd_file) if args.sd_file else None,
        config_dir=Path(args.config_dir) if args.config_dir else None, binary=args.prometheus,
    )


def add_cli(verbs: Any) -> None:
    """The ``monitor`` verb."""
    monitor = verbs.add_parser("monitor", help="start Prometheus (Debian's `prometheus`) against the running cluster")
    monitor.add_argument("--listen", default="127.0.0.1:9090", help="Prometheus web address")
    monitor.add_argument("--data-dir", default=".rayml/prometheus", help="config and TSDB directory")
    monitor.add_argument("--scrape-interval", default="15s", help="Prometheus duration, e.g. 5s")
    monitor.add_argument("--sd-file", help="file_sd JSON of the targets (default: RAY_ADDRESS's nodes, or "
                         f"{RAY_SD_FILE})")
    monitor.add_argument("--config-dir", help="folder with prometheus.yml and rules/ (default: cluster/monitoring)")
    monitor.add_argument("--prometheus", help="path of the prometheus binary (default: from PATH)")
    monitor.set_defaults(func=main)

