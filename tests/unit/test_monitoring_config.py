"""Prometheus config and alert rules: Prometheus' own checker and rule unit tests (promtool), plus the ties
between the rules, their tests and rayml's metric table. No Ray, no Prometheus server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rayml import metrics, monitor
from rayml.errors import RaymlError
from tests.conftest import REPO

MONITORING = REPO / "cluster" / "monitoring"
RULES = MONITORING / "rules" / "rayml-alerts.yml"
RULE_TESTS = MONITORING / "rules" / "tests" / "rayml-alerts.test.yml"

# .ci/run installs Debian's prometheus and fails the session on any skip (RAYML_CI, tests/conftest.py).
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install -y prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_promtool_accepts_the_shipped_config_and_the_one_rayml_monitor_writes(tmp_path: Path) -> None:
    shipped = promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr

    sd_file = tmp_path / "targets.json"
    sd_file.write_text('[{"labels": {"job": "ray"}, "targets": ["127.0.0.1:8090"]}]')
    config = monitor.render_config(MONITORING, sd_file, "5s")
    written = tmp_path / "prometheus.yml"
    written.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(written))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout


def test_rendered_config_points_at_the_targets_and_absolute_rule_files(tmp_path: Path) -> None:
    config = monitor.render_config(MONITORING, tmp_path / "sd.json", "2s")
    assert config["global"]["scrape_interval"] == "2s"
    assert config["rule_files"] == [str(RULES.resolve())]
    [job] = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "sd.json")]


def test_every_alert_has_a_unit_test_that_makes_it_fire() -> None:
    firing = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                firing.add(check["alertname"])
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    assert sorted(set(names) - firing) == []


def test_rules_query_only_declared_metrics_and_carry_severity_and_text() -> None:
    for rule in alert_rules():
        assert metrics.unknown_names(rule["expr"]) == [], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_unknown_metric_names_are_reported() -> None:
    assert metrics.unknown_names("rate(ray_rayml_serve_request_total[5m])") == ["ray_rayml_serve_request_total"]
    assert metrics.unknown_names("ray_rayml_serve_batch_rows_bucket + ray_rayml_train_epoch") == []
    # a gauge has no histogram series
    assert metrics.unknown_names("ray_rayml_train_epoch_bucket") == ["ray_rayml_train_epoch_bucket"]


def test_node_targets_list_each_alive_node_metrics_port() -> None:
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8080},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8080},
        {"Alive": True, "NodeManagerAddress": "10.0.0.3", "MetricsExportPort": 8081},
    ]
    assert monitor.node_targets(nodes) == [{"labels": {"job": "ray"}, "targets": ["10.0.0.1:8080", "10.0.0.3:8081"]}]


def test_a_missing_prometheus_binary_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RaymlError, match="apt-get install -y prometheus"):
        monitor.Prometheus({}, tmp_path / "data")


def test_monitor_without_a_cluster_explains_what_to_start(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(monitor, "RAY_SD_FILE", tmp_path / "missing.json")
    with pytest.raises(RaymlError, match="no running Ray cluster found"):
        monitor.serve_monitor(tmp_path / "data", listen="127.0.0.1:0", scrape_interval="5s")
