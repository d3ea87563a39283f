"""The Grafana dashboard in deploy/grafana asks only for series a real balancer exports: every
metric name in every panel's PromQL is a sample name of a live /metrics scrape (so histograms
as ``_bucket``, counters as ``_total``), and every label it groups or filters by is on one of
that query's metrics."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rpcbalancer.sim import Behaviour, FleetThread

from ..conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "rpcbalancer.json"
METRIC = re.compile(r"\brpcbalancer_[a-z0-9_]+")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
OWN_LABELS = {"instance", "job", "le"}  # Prometheus adds instance and job; le is the bucket's


def queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    stack: list[dict[str, Any]] = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def scrape_labels(text: str) -> dict[str, set[str]]:
    """Each sample name of a scrape, with the label names it carries."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


@pytest.fixture
def fleet() -> Iterator[FleetThread]:
    """Two nodes, one lagging, so that head block and lag have values to show."""
    with FleetThread({"a": Behaviour(latency=0.002), "b": Behaviour(lag=5)}) as running:
        yield running


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    assert len(list(queries())) >= 20


@pytest.mark.slow
def test_every_metric_in_the_dashboard_is_exported(
    fleet: FleetThread, balancer_process: Any, tmp_path: Path
) -> None:
    # a store, so that the store's metrics are exported; probes every 0.5 s
    lb = balancer_process(
        {
            "nodes": fleet.urls,
            "store": f"sqlite:///{tmp_path / 'health.db'}",
            "probe": {"interval": 0.5},
        }
    )
    wanted = {name for _, expr in queries() for name in METRIC.findall(expr)}
    deadline = time.monotonic() + 20
    while True:  # probe and store series appear once the first round is in
        for i in range(5):
            lb.rpc("condenser_api.get_dynamic_global_properties", ident=i)
        exported = scrape_labels(requests.get(f"{lb.url}/metrics", timeout=5).text)
        if wanted <= exported.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.25)

    for title, expr in queries():
        names = METRIC.findall(expr)
        assert names, f"panel {title!r}: no rpcbalancer metric in {expr!r}"
        missing = [name for name in names if name not in exported]
        assert not missing, f"panel {title!r}: {missing} not in the scrape"
        labels = set().union(*(exported[name] for name in names)) | OWN_LABELS
        used = {m for group in GROUPING.findall(expr) for m in re.findall(r"\w+", group)}
        used |= set(MATCHER.findall(expr))
        assert used <= labels, f"panel {title!r}: labels {used - labels} not on {names}"
