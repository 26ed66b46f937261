"""The fraud pipeline, run once per session on the shared cluster; tests inspect its outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

JOB = REPO / "jobs" / "fraud_detection.yaml"


def job_overrides(data: Path, root: Path, *extra: str, tracking: bool = False) -> list[str]:
    # A larger test split than the job's default keeps the ROC-AUC comparison from resting on ~30 positives.
    # MLflow tracking is checked on the main run only; elsewhere it would only add its start-up time.
    return [
        f"source.path={data}", f"run.root={root}", f"registry.root={root / 'registry'}",
        "split.train=0.7", "split.val=0.1", "split.test=0.2", f"tracking.enabled={str(tracking).lower()}", *extra,
    ]


@pytest.fixture(scope="session")
def fraud_run(ray_cluster, fraud_data, tmp_path_factory) -> dict:
    from rayml import pipeline

    root = tmp_path_factory.mktemp("runs")
    job = pipeline.load_job(JOB, job_overrides(fraud_data["path"], root, "run.name=main", "train.epochs=6",
                                               tracking=True))
    registered = pipeline.run(job)
    return {"job": job, "root": root, "run_dir": root / "main", "registered": registered}
