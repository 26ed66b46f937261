"""rayml's Grafana dashboards: load and check the JSON models, render their queries, push them to Grafana.

The dashboards are Grafana JSON models in ``cluster/monitoring/grafana/dashboards``. Grafana can load them
itself through file provisioning (``cluster/monitoring/grafana/provisioning``); ``push`` (``rayml dashboards
push``) sends them over Grafana's HTTP API instead, for a Grafana whose disk you cannot reach. ``render`` turns
a panel's query into plain PromQL for Prometheus's HTTP API, so tests can check that panels return data.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayml.errors import ConfigError, RaymlError

if TYPE_CHECKING:
    from grafana_client import GrafanaApi

# The repository's dashboards, found from this file: present in a checkout (and an editable install), not
# in a wheel, where ``load`` says to pass --dir.
DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "cluster" / "monitoring" / "grafana" / "dashboards"

# What Grafana substitutes for its built-in variables with a 15 s scrape interval (prometheus.yml) over a 1 h
# range, and the provisioned data source's uid for ``${datasource}``.
DEFAULT_VARIABLES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "datasource": "prometheus",
}

# $name, ${name}, ${name:format} and the deprecated [[name]]; never "$1" (label_replace's references).
_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::\w+)?\]\]")
_GRAFANA_UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel: where it sits and its PromQL (with Grafana's variables still in it)."""

    dashboard: str  # the dashboard's uid
    panel: str  # the panel's title
    row: str | None  # title of the row the panel sits under; None above the first row
    ref_id: str
    expr: str


def load(directory: str | Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    """Every ``*.json`` dashboard in ``directory``, by file name, each checked to parse and to carry a
    ``uid``, a ``title`` and a ``panels`` list, with no uid used twice. Raises ``ConfigError`` listing every
    problem with its file, or ``RaymlError`` when the directory is missing or empty."""
    folder = Path(directory)
    if not folder.is_dir():
        raise RaymlError(
            f"no dashboards directory at {folder}; pass --dir with the path of "
            "cluster/monitoring/grafana/dashboards in a rayml checkout"
        )
    files = sorted(folder.glob("*.json"))
    if not files:
        raise RaymlError(f"no *.json dashboards in {folder}; pass --dir with the directory that holds them")
    dashboards: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in files:
        dashboard, found = _read(path)
        problems.extend(found)
        if dashboard is None or found:
            continue
        uid = dashboard["uid"]
        if uid in seen:
            problems.append(f"{path.name}: uid {uid!r} is already used by {seen[uid]}; give each dashboard its own")
            continue
        seen[uid] = path.name
        dashboards.append(dashboard)
    if problems:
        raise ConfigError(problems, source=str(folder))
    return dashboards


def _read(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    try:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path.name}: cannot read it ({exc})"]
    except json.JSONDecodeError as exc:
        return None, [f"{path.name}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
    if not isinstance(dashboard, dict):
        return None, [f"{path.name}: expected a JSON object (a Grafana dashboard model), got {type(dashboard).__name__}"]
    problems = []
    uid = dashboard.get("uid")
    if not isinstance(uid, str) or not _GRAFANA_UID.match(uid):
        problems.append(f"{path.name}: 'uid' is {uid!r}; set it to 1-40 letters, digits, '-' or '_'")
    title = dashboard.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append(f"{path.name}: 'title' is {title!r}; set a non-empty title")
    if not isinstance(dashboard.get("panels"), list):
        problems.append(f"{path.name}: 'panels' is missing or not a list; a dashboard needs a list of panels")
    return dashboard, problems


def panel_queries(dashboards: Iterable[Mapping[str, Any]]) -> list[PanelQuery]:
    """Every query with an ``expr`` of every panel, in dashboard order, including the panels inside rows."""
    queries: list[PanelQuery] = []
    for dashboard in dashboards:
        row: str | None = None
        for panel in dashboard.get("panels", []):
            if panel.get("type") == "row":
                row = panel.get("title", "")
                # a collapsed row holds its panels; an expanded one is followed by them
                queries.extend(_queries(dashboard["uid"], row, panel.get("panels", [])))
            else:
                queries.extend(_queries(dashboard["uid"], row, [panel]))
    return queries


def _queries(uid: str, row: str | None, panels: Iterable[Mapping[str, Any]]) -> list[PanelQuery]:
    queries = []
    for panel in panels:
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append(PanelQuery(uid, panel.get("title", ""), row, target.get("refId", ""), target["expr"]))
    return queries


def render(expr: str, variables: Mapping[str, str | Sequence[str]] | None = None) -> str:
    """``expr`` with Grafana's variables replaced, ready for Prometheus's HTTP API.

    Built-ins (``$__rate_interval``, ``$__interval``, ``$__range``, ``${datasource}``) take
    ``DEFAULT_VARIABLES`` unless ``variables`` overrides them. A dashboard variable (``$model``, ``${model}``,
    ``[[model]]``) takes its value from ``variables`` as given, a list becoming an escaped regex alternation
    as Grafana renders a multi-value selection, and ``.*`` (the dashboards' "All") when absent; the
    dashboards match them with ``=~``. Raises ``RaymlError`` for a built-in it does not know.
    """
    values = {**DEFAULT_VARIABLES, **(variables or {})}

    def substitute(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        value = values.get(name)
        if value is None:
            if name.startswith("__"):
                raise RaymlError(f"unknown Grafana variable ${name} in {expr!r}; pass its value in variables")
            return ".*"
        if isinstance(value, str):
            return value
        return "(" + "|".join(re.escape(item) for item in value) + ")"

    return _VARIABLE.sub(substitute, expr)


def push(
    url: str,
    token: str | None,
    dashboards: Sequence[Mapping[str, Any]],
    folder: str | None = None,
    overwrite: bool = True,
) -> list[dict[str, Any]]:
    """Create or update each dashboard in the Grafana at ``url`` (its root, e.g. ``http://127.0.0.1:3000``),
    in the folder titled ``folder`` (created when missing; None: Grafana's General folder).

    ``token`` is a service-account token (Editor role) sent as a bearer token; None uses the user:password
    in ``url``, if any. Returns Grafana's answer per dashboard (``uid``, ``url``, ``version``, ``status``).
    Raises ``RaymlError`` naming the dashboard or folder and the HTTP status when Grafana refuses.
    """
    from grafana_client import GrafanaApi  # lazy: importing rayml must not import an HTTP client

    api = GrafanaApi.from_url(url=url, credential=token or None, timeout=_TIMEOUT_S)
    folder_uid = _ensure_folder(api, url, folder) if folder else None
    answers = []
    for dashboard in dashboards:
        body: dict[str, Any] = {
            "dashboard": {**dashboard, "id": None},  # the id is per Grafana instance; the uid identifies it
            "overwrite": overwrite,
            "message": "rayml dashboards push",
        }
        if folder_uid is not None:
            body["folderUid"] = folder_uid
        with _grafana_errors(f"dashboard {dashboard.get('uid')!r} ({dashboard.get('title')})", url):
            answers.append(api.dashboard.update_dashboard(body))
    return answers


def _ensure_folder(api: GrafanaApi, url: str, title: str) -> str:
    with _grafana_errors(f"folder {title!r}", url):
        for existing in api.folder.get_all_folders():
            if existing.get("title") == title:
                return str(existing["uid"])
        uid = re.sub(r"[^a-z0-9_-]+", "-", title.lower()).strip("-")[:40] or "rayml"
        created = api.folder.create_folder(title, uid=uid)
    return str(created["uid"])


_HINTS = {
    400: "Grafana rejected the JSON; check the file with `rayml dashboards list`.",
    401: "Check the token (--token or GRAFANA_TOKEN): a Grafana service-account token.",
    403: "The token may not write here; give its service account the Editor role.",
    404: "Check --url: it must be Grafana's root URL, e.g. http://127.0.0.1:3000.",
    412: "A dashboard with the same uid or title was changed in Grafana; push with overwrite to replace it.",
}


@contextmanager
def _grafana_errors(what: str, url: str) -> Iterator[None]:
    from grafana_client.client import GrafanaException

    try:
        yield
    except GrafanaException as exc:
        status = f"HTTP {exc.status_code}" if exc.status_code else "no HTTP answer"
        message = f"Grafana at {url} refused {what}: {status}: {exc.message}. {_HINTS.get(exc.status_code, '')}"
        raise RaymlError(message.rstrip()) from exc
    except OSError as exc:  # connection refused, DNS, TLS: the HTTP client's errors are OSErrors
        raise RaymlError(f"could not reach Grafana at {url} to push {what}: {exc}. Check --url.") from exc


def add_cli(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``rayml dashboards push|list`` to the ``rayml`` command's subparsers; each sets ``func``."""
    parser = verbs.add_parser("dashboards", help="list rayml's Grafana dashboards or push them to a Grafana")
    actions = parser.add_subparsers(dest="dashboards_action", required=True)
    dir_help = f"directory of dashboard JSON files (default: {DASHBOARD_DIR})"

    push_parser = actions.add_parser("push", help="create or update the dashboards through Grafana's HTTP API")
    push_parser.add_argument("--url", required=True, help="Grafana's root URL, e.g. http://127.0.0.1:3000")
    push_parser.add_argument("--token", help="service-account token (default: $GRAFANA_TOKEN, the safer way)")
    push_parser.add_argument("--folder", help="folder title, created when missing (default: General)")
    push_parser.add_argument("--dir", help=dir_help)
    push_parser.set_defaults(func=_push_command)

    list_parser = actions.add_parser("list", help="check the dashboard files and list them with their panels")
    list_parser.add_argument("--dir", help=dir_help)
    list_parser.set_defaults(func=_list_command)
    return parser


def _push_command(args: argparse.Namespace) -> int:
    dashboards = load(args.dir or DASHBOARD_DIR)
    token = args.token or os.environ.get("GRAFANA_TOKEN") or None
    answers = push(args.url, token, dashboards, folder=args.folder)
    base = args.url.rstrip("/")
    for dashboard, answer in zip(dashboards, answers):
        print(f"pushed {dashboard['uid']} ({dashboard['title']}): {base}{answer.get('url', '')}")
    return 0


def _list_command(args: argparse.Namespace) -> int:
    for dashboard in load(args.dir or DASHBOARD_DIR):
        panels = _count_panels(dashboard["panels"])
        print(f"{dashboard['uid']:<20} {dashboard['title']:<24} {panels} panels")
    return 0


def _count_panels(panels: Iterable[Mapping[str, Any]]) -> int:
    count = 0
    for panel in panels:
        count += _count_panels(panel.get("panels", [])) if panel.get("type") == "row" else 1
    return count
