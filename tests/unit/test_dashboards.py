"""Unit tests for rayml's Grafana dashboards and rayml.dashboards (no Ray, no Grafana server).

The dashboards are checked as data: every query names a metric rayml declares (with Ray's ``ray_`` prefix and
Prometheus' histogram suffixes) or one of Ray Serve's own, with labels that metric carries; Prometheus's own
parser (``promtool``) accepts every query once rendered. ``push`` runs against a real HTTP server on loopback
that answers the few Grafana API endpoints grafana-client calls.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rayml import dashboards
from rayml.errors import ConfigError, RaymlError
from rayml.metrics import METRICS

# Ray Serve's own metrics the serving dashboard reads, as a Ray 2.60 metrics endpoint shows them, with the
# labels the dashboard may use.
_SERVE_LABELS = frozenset({"application", "deployment", "replica"})
RAY_SERVE_METRICS: dict[str, frozenset[str]] = {
    "ray_serve_deployment_replica_healthy": _SERVE_LABELS,
    "ray_serve_deployment_processing_latency_ms_bucket": _SERVE_LABELS | {"le"},
    "ray_serve_deployment_request_counter_total": _SERVE_LABELS,
    "ray_serve_deployment_queued_queries": _SERVE_LABELS,
    "ray_serve_replica_utilization_percent": _SERVE_LABELS,
}
# PromQL functions and operators the dashboards may use; anything else called like a function is a typo.
FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "time", "vector"}
KEYWORDS = {"or", "and", "unless", "bool", "on", "ignoring", "group_left", "group_right", "offset"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")  # what rate() and increase() may read
INGEST_ROW = "Streaming ingest (rayml ingest)"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _allowed_metrics() -> dict[str, frozenset[str]]:
    """Every series name a dashboard may query, with the labels it carries."""
    allowed: dict[str, frozenset[str]] = {}
    for spec in METRICS.values():
        name, labels = "ray_" + spec.name, frozenset(spec.tag_keys)
        if spec.kind == "histogram":
            allowed[name + "_bucket"] = labels | {"le"}
            allowed[name + "_sum"] = allowed[name + "_count"] = labels
        else:
            assert spec.kind == "gauge" or name.endswith("_total"), name
            allowed[name] = labels
    allowed.update(RAY_SERVE_METRICS)
    return allowed


ALLOWED = _allowed_metrics()


@pytest.fixture(scope="module")
def loaded() -> list[dict[str, Any]]:
    return dashboards.load()


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def _all_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in _all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield panel, target


def _identifiers(expr: str) -> tuple[list[str], list[str]]:
    """(functions called, metric names) in a PromQL expression."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes, variables
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)  # matchers and range durations
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)  # grouping labels
    functions, metrics = [], []
    for match in re.finditer(r"([A-Za-z_:][\w:]*)\s*(\()?", bare):
        word, call = match.group(1), match.group(2)
        if call:
            functions.append(word)
        elif word not in KEYWORDS:
            metrics.append(word)
    return functions, metrics


def _call_arguments(expr: str, function: str) -> list[str]:
    """The argument text of every call of ``function`` in ``expr``."""
    arguments = []
    for match in re.finditer(rf"\b{function}\s*\(", expr):
        depth, start = 1, match.end()
        for index in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[index], 0)
            if depth == 0:
                arguments.append(expr[start:index])
                break
    return arguments


# ------------------------------------------------------------------------------------------ the JSON models
def test_every_dashboard_loads_with_unique_uids(loaded: list[dict[str, Any]]) -> None:
    uids = [d["uid"] for d in loaded]
    assert sorted(uids) == ["rayml-data", "rayml-drift", "rayml-serving", "rayml-training"]
    assert len({d["title"] for d in loaded}) == len(loaded)
    for dashboard in loaded:
        assert 36 <= dashboard["schemaVersion"] <= 41
        assert dashboard["id"] is None  # Grafana assigns ids; a fixed one would clash on import
        assert "rayml" in dashboard["tags"]


def test_datasource_variable_and_template_variables(loaded: list[dict[str, Any]]) -> None:
    for dashboard in loaded:
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for variable in variables.values():
            if variable["type"] != "query":
                continue
            assert variable["datasource"] == DATASOURCE, (dashboard["uid"], variable["name"])
            assert variable["allValue"] == ".*" and variable["includeAll"], variable["name"]
            _check_label_values(variable["definition"], variable["query"]["query"])


def _check_label_values(definition: str, query: str) -> None:
    assert definition == query
    match = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?,\s*(\w+)\)", query)
    assert match, f"not a label_values(metric, label) query: {query}"
    metric, label = match.group(1), match.group(3)
    assert metric in ALLOWED, f"{query}: unknown metric {metric}"
    assert label in ALLOWED[metric], f"{query}: {metric} has no label {label}"


def test_panels_have_ids_titles_types_and_grid_positions(loaded: list[dict[str, Any]]) -> None:
    for dashboard in loaded:
        ids = []
        for panel in _all_panels(dashboard["panels"]):
            where = f"{dashboard['uid']}: {panel.get('title')!r}"
            ids.append(panel["id"])
            assert panel["title"] and panel["type"], where
            grid = panel["gridPos"]
            assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, where
            assert grid["x"] + grid["w"] <= 24, where
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: panel ids repeat"
        _assert_no_overlap(dashboard)


def _assert_no_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in _all_panels(dashboard["panels"]):
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{dashboard['uid']}: {panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_every_target_has_a_ref_id_an_expr_and_the_datasource_variable(loaded: list[dict[str, Any]]) -> None:
    for dashboard in loaded:
        for panel in _all_panels(dashboard["panels"]):
            ref_ids = [t["refId"] for t in panel.get("targets", [])]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for panel, target in _all_targets(dashboard):
            where = f"{dashboard['uid']}: {panel['title']!r} {target.get('refId')}"
            assert target["refId"] and target["expr"].strip(), where
            assert target["datasource"]["uid"] == "${datasource}", where


def test_every_metric_is_declared_and_every_function_known(loaded: list[dict[str, Any]]) -> None:
    problems = []
    for query in dashboards.panel_queries(loaded):
        functions, metrics = _identifiers(query.expr)
        problems += [f"{query.panel}: unknown function {f}" for f in functions if f not in FUNCTIONS]
        problems += [f"{query.panel}: unknown metric {m}" for m in metrics if m not in ALLOWED]
        assert metrics, f"{query.panel}: no metric in {query.expr}"
    assert not problems, "\n".join(problems)


def test_labels_belong_to_the_metrics_queried(loaded: list[dict[str, Any]]) -> None:
    problems = []
    for query in dashboards.panel_queries(loaded):
        _, metrics = _identifiers(query.expr)
        labels = frozenset().union(*(ALLOWED.get(m, frozenset()) for m in metrics))
        for metric, matchers in re.findall(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", query.expr):
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                if label not in ALLOWED.get(metric, ()):
                    problems.append(f"{query.panel}: {metric} has no label {label}")
                if "$" in value and op not in ("=~", "!~"):
                    problems.append(f"{query.panel}: match ${value} with =~ (its 'All' value is the regex .*)")
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query.expr):
            for label in (item.strip() for item in grouping.split(",")):
                if label not in labels:
                    problems.append(f"{query.panel}: grouping by {label}, which no queried metric has")
    assert not problems, "\n".join(problems)


def test_histogram_quantile_reads_buckets_and_rate_reads_counters(loaded: list[dict[str, Any]]) -> None:
    for dashboard in loaded:
        for panel, target in _all_targets(dashboard):
            expr, where = target["expr"], f"{dashboard['uid']}: {panel['title']!r}"
            quantile_metrics = []
            for argument in _call_arguments(expr, "histogram_quantile"):
                quantile_metrics += _identifiers(argument)[1]
            assert all(m.endswith("_bucket") for m in quantile_metrics), where
            buckets = [m for m in _identifiers(expr)[1] if m.endswith("_bucket")]
            if target.get("format") != "heatmap":  # heatmaps read buckets directly; Grafana de-accumulates
                assert len(buckets) == len(quantile_metrics), f"{where}: a _bucket series outside histogram_quantile"
            for function in ("rate", "increase"):
                for argument in _call_arguments(expr, function):
                    for metric in _identifiers(argument)[1]:
                        assert metric.endswith(COUNTER_SUFFIXES), f"{where}: {function}() of gauge {metric}"


def test_template_variables_in_queries_are_defined(loaded: list[dict[str, Any]]) -> None:
    for dashboard in loaded:
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        for panel, target in _all_targets(dashboard):
            for name in re.findall(r"\$\{?([A-Za-z_]\w*)", target["expr"]):
                assert name.startswith("__") or name in defined, f"{panel['title']}: ${name} is not defined"


def test_dashboards_cover_every_metric(loaded: list[dict[str, Any]]) -> None:
    used = set()
    for query in dashboards.panel_queries(loaded):
        used.update(_identifiers(query.expr)[1])
    for spec in METRICS.values():
        suffixes = ("_bucket", "_sum", "_count") if spec.kind == "histogram" else ("",)
        assert any("ray_" + spec.name + s in used for s in suffixes), (
            f"no panel shows {spec.name}; add one to cluster/monitoring/grafana/dashboards"
        )
    assert set(RAY_SERVE_METRICS) <= used


def test_ingest_metrics_sit_in_their_own_row(loaded: list[dict[str, Any]]) -> None:
    queries = dashboards.panel_queries(loaded)
    ingest = [q for q in queries if "ray_rayml_ingest_" in q.expr]
    assert ingest and all(q.row == INGEST_ROW and q.dashboard == "rayml-data" for q in ingest)
    assert all("ray_rayml_ingest_" in q.expr for q in queries if q.row == INGEST_ROW)
    assert {q.row for q in queries if q.dashboard == "rayml-data"} == {"Batch validation (rayml run)", INGEST_ROW}


def test_drift_dashboard_shows_latest_psi_with_thresholds(loaded: list[dict[str, Any]]) -> None:
    drift = next(d for d in loaded if d["uid"] == "rayml-drift")
    latest = [p for p in _all_panels(drift["panels"]) if p["type"] in ("bargauge", "table")]
    assert {p["type"] for p in latest} == {"bargauge", "table"}
    for panel in latest:
        assert all(t["instant"] and "ray_rayml_serve_feature_psi" in t["expr"] for t in panel["targets"])
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, 0.1, 0.25]


# -------------------------------------------------------------------------------------------------- render
def test_render_leaves_no_variable_behind(loaded: list[dict[str, Any]]) -> None:
    for query in dashboards.panel_queries(loaded):
        rendered = dashboards.render(query.expr)
        assert "$" not in rendered and "[[" not in rendered, rendered
    for dashboard in loaded:  # the panels' data source fields too
        for _panel, target in _all_targets(dashboard):
            assert dashboards.render(target["datasource"]["uid"]) == "prometheus"


def test_render_substitutes_values_lists_and_defaults() -> None:
    expr = 'sum(rate(m{model=~"$model", version=~"${version}", x=~"[[x]]"}[$__rate_interval])) [$__range]'
    assert dashboards.render(expr, {"model": "fraud", "__rate_interval": "5m"}) == (
        'sum(rate(m{model=~"fraud", version=~".*", x=~".*"}[5m])) [1h]'
    )
    assert dashboards.render('m{v=~"$v"}', {"v": ["1", "2.0"]}) == r'm{v=~"(1|2\.0)"}'
    assert dashboards.render('label_replace(m, "a", "$1", "b", "(.*)")') == 'label_replace(m, "a", "$1", "b", "(.*)")'
    with pytest.raises(RaymlError, match=r"\$__unknown"):
        dashboards.render("rate(m[$__unknown])")


# -------------------------------------------------------------------------------- promtool: Prometheus's parser
def _promtool_check(tmp_path: Path, groups: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "dashboards.rules.yml"
    rules.write_text(json.dumps({"groups": groups}, indent=1))  # JSON is YAML
    return subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_parses_every_rendered_query(loaded: list[dict[str, Any]], tmp_path: Path) -> None:
    groups: dict[str, list[dict[str, str]]] = {}
    for index, query in enumerate(dashboards.panel_queries(loaded)):
        record = f"rayml_dashboard_check:{query.dashboard.replace('-', '_')}_{index}"
        groups.setdefault(query.dashboard, []).append({"record": record, "expr": dashboards.render(query.expr)})
    result = _promtool_check(tmp_path, [{"name": uid, "rules": rules} for uid, rules in groups.items()])
    assert result.returncode == 0, result.stdout + result.stderr
    # and promtool does reject a broken query, so the check above means something
    broken = _promtool_check(tmp_path, [{"name": "x", "rules": [{"record": "x", "expr": "sum(rate(m[1m])"}]}])
    assert broken.returncode != 0


# ------------------------------------------------------------------------------------- load / panel_queries
def _write(folder: Path, name: str, dashboard: Any) -> None:
    (folder / name).write_text(dashboard if isinstance(dashboard, str) else json.dumps(dashboard))


def test_load_reports_every_bad_file_by_name(tmp_path: Path) -> None:
    _write(tmp_path, "a.json", {"uid": "same", "title": "A", "panels": []})
    _write(tmp_path, "b.json", {"uid": "same", "title": "B", "panels": []})
    _write(tmp_path, "c.json", '{"uid": "c",')
    _write(tmp_path, "d.json", {"uid": "has space", "panels": {}})
    with pytest.raises(ConfigError) as caught:
        dashboards.load(tmp_path)
    text = str(caught.value)
    assert "b.json: uid 'same' is already used by a.json" in text
    assert "c.json: not valid JSON at line 1" in text
    assert "d.json: 'uid'" in text and "d.json: 'title'" in text and "d.json: 'panels'" in text


def test_load_names_the_dir_option_when_the_directory_is_missing(tmp_path: Path) -> None:
    with pytest.raises(RaymlError, match="--dir"):
        dashboards.load(tmp_path / "nowhere")
    with pytest.raises(RaymlError, match="no \\*.json"):
        dashboards.load(tmp_path)


def test_panel_queries_walk_expanded_and_collapsed_rows() -> None:
    target = {"refId": "A", "expr": "up"}
    dashboard = {"uid": "u", "title": "t", "panels": [
        {"type": "stat", "title": "top", "targets": [target]},
        {"type": "row", "title": "open", "collapsed": False, "panels": []},
        {"type": "timeseries", "title": "under open", "targets": [target, {"refId": "B", "expr": ""}]},
        {"type": "row", "title": "shut", "collapsed": True, "panels": [
            {"type": "timeseries", "title": "inside shut", "targets": [{"refId": "C", "expr": "down"}]}]},
    ]}
    assert dashboards.panel_queries([dashboard]) == [
        dashboards.PanelQuery("u", "top", None, "A", "up"),
        dashboards.PanelQuery("u", "under open", "open", "A", "up"),
        dashboards.PanelQuery("u", "inside shut", "shut", "C", "down"),
    ]


# -------------------------------------------------------------------------- push against a real HTTP server
class FakeGrafana:
    """The Grafana HTTP API endpoints that ``push`` uses, on 127.0.0.1, recording every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.folders: list[dict[str, Any]] = []
        self.dashboard_status = 200  # answer POST /api/dashboards/db with this
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(*fake.answer("GET", self))

            def do_POST(self) -> None:
                self._answer(*fake.answer("POST", self))

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def answer(self, method: str, request: BaseHTTPRequestHandler) -> tuple[int, Any]:
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length)) if length else None
        self.requests.append({"method": method, "path": request.path, "headers": dict(request.headers),
                              "body": body})
        path = request.path.split("?")[0]
        if (method, path) == ("GET", "/api/folders"):
            return 200, self.folders
        if (method, path) == ("POST", "/api/folders"):
            folder = {"id": len(self.folders) + 1, "uid": body.get("uid") or "generated", "title": body["title"]}
            self.folders.append(folder)
            return 200, folder
        if (method, path) == ("POST", "/api/dashboards/db"):
            return self._dashboard(body)
        return 404, {"message": "Not found"}

    def _dashboard(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.dashboard_status == 401:
            return 401, {"message": "invalid API key"}
        if self.dashboard_status != 200:
            return self.dashboard_status, {"message": "A dashboard with the same name in the folder already exists",
                                           "status": "name-exists"}
        uid = body["dashboard"]["uid"]
        return 200, {"id": 7, "uid": uid, "url": f"/d/{uid}/x", "status": "success", "version": 1}

    def posted_dashboards(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/api/dashboards/db"]


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    fake = FakeGrafana()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_push_creates_the_folder_and_posts_every_dashboard(grafana: FakeGrafana,
                                                          loaded: list[dict[str, Any]]) -> None:
    answers = dashboards.push(grafana.url, "sekrit", loaded, folder="rayml demo")
    assert [a["uid"] for a in answers] == [d["uid"] for d in loaded]
    assert all(r["headers"]["Authorization"] == "Bearer sekrit" for r in grafana.requests)
    created = [r for r in grafana.requests if (r["method"], r["path"]) == ("POST", "/api/folders")]
    assert [c["body"] for c in created] == [{"title": "rayml demo", "uid": "rayml-demo"}]
    posted = grafana.posted_dashboards()
    assert len(posted) == len(loaded)
    for request, dashboard in zip(posted, loaded):
        sent = request["body"]
        assert sent["overwrite"] is True and sent["folderUid"] == "rayml-demo"
        assert sent["dashboard"] == {**dashboard, "id": None}


def test_push_reuses_an_existing_folder_and_honours_overwrite(grafana: FakeGrafana,
                                                             loaded: list[dict[str, Any]]) -> None:
    grafana.folders.append({"id": 3, "uid": "abc", "title": "rayml"})
    dashboards.push(grafana.url, "t", loaded[:1], folder="rayml", overwrite=False)
    assert not [r for r in grafana.requests if (r["method"], r["path"]) == ("POST", "/api/folders")]
    (posted,) = grafana.posted_dashboards()
    assert posted["body"]["folderUid"] == "abc" and posted["body"]["overwrite"] is False


def test_push_without_folder_sends_no_folder(grafana: FakeGrafana, loaded: list[dict[str, Any]]) -> None:
    dashboards.push(grafana.url, "t", loaded[:1])
    assert [r["path"] for r in grafana.requests] == ["/api/dashboards/db"]
    assert "folderUid" not in grafana.requests[0]["body"]


@pytest.mark.parametrize("status", [401, 412])
def test_push_turns_a_refusal_into_a_rayml_error(grafana: FakeGrafana, loaded: list[dict[str, Any]],
                                                 status: int) -> None:
    grafana.dashboard_status = status
    serving = next(d for d in loaded if d["uid"] == "rayml-serving")
    with pytest.raises(RaymlError, match=f"'rayml-serving'.*HTTP {status}") as caught:
        dashboards.push(grafana.url, "bad", [serving])
    assert caught.value.__cause__ is not None


def test_push_to_a_closed_port_says_it_could_not_reach_grafana(loaded: list[dict[str, Any]]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RaymlError, match="could not reach Grafana"):
        dashboards.push(f"http://127.0.0.1:{port}", "t", loaded[:1])


# ---------------------------------------------------------------------------------------------------- CLI
def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rayml")
    dashboards.add_cli(parser.add_subparsers(dest="verb", required=True))
    return parser.parse_args(argv)


def test_cli_push_takes_the_token_from_the_environment(grafana: FakeGrafana, loaded: list[dict[str, Any]],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "from-env")
    args = _cli(["dashboards", "push", "--url", grafana.url, "--folder", "rayml"])
    assert args.func(args) == 0
    assert {r["headers"]["Authorization"] for r in grafana.requests} == {"Bearer from-env"}
    assert [r["body"]["dashboard"]["uid"] for r in grafana.posted_dashboards()] == [d["uid"] for d in loaded]
    out = capsys.readouterr().out
    assert f"pushed rayml-serving (rayml / Serving): {grafana.url}/d/rayml-serving/x" in out


def test_cli_push_flag_token_and_dir(grafana: FakeGrafana, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", "from-env")
    _write(tmp_path, "mine.json", {"uid": "mine", "title": "Mine", "panels": []})
    args = _cli(["dashboards", "push", "--url", grafana.url + "/", "--token", "flag", "--dir", str(tmp_path)])
    assert args.func(args) == 0
    (posted,) = grafana.posted_dashboards()
    assert posted["headers"]["Authorization"] == "Bearer flag" and posted["body"]["dashboard"]["uid"] == "mine"


def test_cli_list_prints_each_dashboard_with_its_panel_count(loaded: list[dict[str, Any]],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli(["dashboards", "list"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(loaded)
    for line, dashboard in zip(lines, loaded):
        panels = [p for p in _all_panels(dashboard["panels"]) if p["type"] != "row"]
        assert line.split()[0] == dashboard["uid"] and line.endswith(f" {len(panels)} panels")
