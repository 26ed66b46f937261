"""The validate stage on Ray Data over CSV and JSON-lines sources: every record accounted for."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rayml import validate
from rayml.datasets.fraud import generate_fraud
from rayml.pipeline import load_job
from rayml.source import SourceConfig
from tests.integration.conftest import JOB

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_sources_reconcile_read_valid_and_quarantined(ray_cluster, tmp_path, fmt):
    summary = generate_fraud(3000, tmp_path / "data", seed=3, bad_fraction=0.03, fmt=fmt, rows_per_file=1000)
    job = load_job(JOB)
    source = SourceConfig(path=str(tmp_path / "data"), format=fmt, batch_rows=500)
    result = validate.run_stage(source, job.validation, tmp_path / "validate")
    assert result["read_rows"] == summary["rows"] == result["valid_rows"] + result["quarantined_rows"]
    assert result["quarantined_rows"] == summary["bad_rows"]
    quarantined = pq.ParquetDataset(result["quarantine_path"]).read().to_pylist()
    for row in quarantined:
        assert row[validate.ERROR] and row[validate.SOURCE_ROW] >= 0
    # _raw is the original JSON line (jsonl) or the record's text fields as JSON (csv): nothing is lost
    ids = [json.loads(row[validate.RAW])["transaction_id"] for row in quarantined]
    assert sorted(ids) == sorted(summary["bad_ids"])
