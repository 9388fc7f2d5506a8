"""The Grafana dashboard (docs/grafana/db-backup.json) is a Grafana 10 dashboard model that
imports with a Prometheus data source variable; the live metric names are checked in
tests/integration/test_grafana_metrics.py."""

from __future__ import annotations

import re
from typing import Any

from tests.support import grafana

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "stat", "table", "timeseries", "state-timeline"}
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}


def test_the_dashboard_is_a_grafana_10_model_with_a_datasource_variable() -> None:
    dashboard = grafana.load()
    assert dashboard["uid"] == "db-backup" and dashboard["title"] == "db-backup"
    assert dashboard["schemaVersion"] >= 38 and dashboard["id"] is None  # 38 = Grafana 10.0
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("grafana", "grafana") in required and ("datasource", "prometheus") in required
    assert {("panel", t) for t in PANEL_TYPES - {"row"}} <= required
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "backup_job", "database"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["definition"] == variables[name]["query"]["query"]


def test_every_panel_queries_the_datasource_variable_and_has_its_own_place() -> None:
    dashboard = grafana.load()
    ids = [panel["id"] for panel in grafana.panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in grafana.panels(dashboard):
        assert panel["type"] in PANEL_TYPES, panel["type"]
        place = panel["gridPos"]
        assert place["x"] >= 0 and place["w"] > 0 and place["x"] + place["w"] <= 24, panel["title"]
        covered = {
            (row, column)
            for row in range(place["y"], place["y"] + place["h"])
            for column in range(place["x"], place["x"] + place["w"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE and panel["description"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip()


def test_the_panels_show_what_a_dba_looks_for() -> None:
    titles = " | ".join(p["title"].lower() for p in grafana.panels(grafana.load()))
    for wanted in (
        "last result",
        "age of the newest successful backup",
        "backup size",
        "backup duration",
        "drill",
        "stale",
        "consumer failures",
    ):
        assert wanted in titles, wanted


def test_every_variable_a_query_uses_is_defined() -> None:
    dashboard = grafana.load()
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_VARIABLES
    for query in grafana.queries(dashboard):
        used = set(grafana.VARIABLE.findall(query))
        assert used <= defined, (query, used - defined)


def test_every_selector_is_of_a_db_backup_metric() -> None:
    for query in grafana.queries(grafana.load()):
        names = {name for name, _ in grafana.SELECTOR.findall(query)}
        assert all(name.startswith("db_backup_") for name in names), query
        assert grafana.METRIC.search(query), query


def value_mappings(panel: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", []))
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "mappings":
                found.extend(prop["value"])
    return found


def test_results_are_shown_as_words_not_zeros_and_ones() -> None:
    dashboard = grafana.load()
    for panel in grafana.panels(dashboard):
        exprs = " ".join(t["expr"] for t in panel.get("targets", []))
        shows_flag = re.search(r"db_backup_(last_run_success|last_drill_success|stale)\{", exprs)
        if shows_flag and "count(" not in exprs and panel["type"] != "timeseries":
            texts = {
                option["text"]
                for mapping in value_mappings(panel)
                for option in mapping["options"].values()
            }
            assert texts & {"OK", "FAILED", "STALE"}, panel["title"]
