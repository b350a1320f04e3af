"""The Grafana dashboard and the Prometheus alert rules read metrics raysisa defines.

Every query of ``k8s/monitoring/raysisa-dashboard.json`` and of the PrometheusRule in
``k8s/prometheus-rule.raysisa.yaml`` names only series that :mod:`raysisa.telemetry`
exports, and every metric it declares is shown or alerted on. ``promtool`` (Debian's
``prometheus`` package; ``.ci/run`` installs it) checks the rules and the dashboard's
PromQL, and unit-tests when each alert fires.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from raysisa import telemetry
from tests.prometheus import binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "k8s" / "monitoring" / "raysisa-dashboard.json"
RULES = ROOT / "k8s" / "prometheus-rule.raysisa.yaml"
NAME = re.compile(r"\b(ray_raysisa_[a-z_]+)\b")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$run": ".*"}


def _dashboard_queries() -> dict[str, list[str]]:
    """{panel title: [expr, ...]} of every panel, and the template variables' queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"] if p["type"] != "row"}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries[f"variable {variable['name']}"] = [re.sub(r"label_values\((\w+),.*\)", r"\1", variable["query"]["query"])]
    return queries


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    assert doc["kind"] == "PrometheusRule"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def _undefined(expr: str) -> set[str]:
    return set(NAME.findall(expr)) - telemetry.exported_names()


def test_every_dashboard_query_reads_a_defined_metric():
    queries = _dashboard_queries()
    assert len(queries) >= 12
    for title, exprs in queries.items():
        assert exprs, f"panel {title!r} has no query"
        for expr in exprs:
            assert NAME.search(expr), f"panel {title!r}: {expr} reads no raysisa metric"
            assert not _undefined(expr), f"panel {title!r}: {sorted(_undefined(expr))} are not defined in raysisa.telemetry"


def test_every_alert_reads_defined_metrics():
    rules = _rules()
    assert {r["alert"] for r in rules} == {
        "RaysisaRequestPastDeadline", "RaysisaBacklogGrowing", "RaysisaShardOverDebtBound", "RaysisaCoordinatorDown"}
    for rule in rules:
        assert NAME.search(rule["expr"]) and not _undefined(rule["expr"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"} and rule["annotations"]["summary"]


def test_every_declared_metric_is_on_the_dashboard_or_in_an_alert():
    used = {name for exprs in _dashboard_queries().values() for expr in exprs for name in NAME.findall(expr)}
    used |= {name for rule in _rules() for name in NAME.findall(rule["expr"])}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families >= {spec.family for spec in telemetry.METRICS.values()}


def test_the_check_catches_a_misspelt_metric():
    assert _undefined('sum(rate(ray_raysisa_request_recieved_total{run="x"}[5m]))') == {"ray_raysisa_request_recieved_total"}
    assert _undefined("sum(rate(ray_raysisa_requests_received_total[5m]))") == set()


def _promtool(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_rules_and_the_dashboards_promql(tmp_path):
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    done = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert done.returncode == 0 and "SUCCESS: 4 rules found" in done.stdout, done.stdout + done.stderr
    # the dashboard's expressions, with Grafana's variables filled in, as recording rules
    records = []
    for index, expr in enumerate(e for exprs in _dashboard_queries().values() for e in exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        records.append({"record": f"dashboard:query_{index}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = _promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # and promtool does reject bad PromQL
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]}))
    assert _promtool("check", "rules", "bad.yaml", cwd=tmp_path).returncode != 0


def _alert(name: str, at: str, labels: list[dict[str, str]]) -> dict:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": label} for label in labels]}


def test_alerts_fire_when_they_should_and_not_before(tmp_path):
    """``promtool test rules`` on synthetic series (annotations are left out of the copy
    tested here: their templates are checked above)."""
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    run = {"run": "s3://b/runs/x"}
    critical, warning = {**run, "severity": "critical"}, {**run, "severity": "warning"}
    selector = '{run="s3://b/runs/x"}'
    tests = [
        {   # the oldest request ages a minute a minute; the deadline is 10 minutes; `for: 5m`
            "interval": "1m",
            "input_series": [
                {"series": f"ray_raysisa_oldest_open_request_age_seconds{selector}", "values": "0+60x30"},
                {"series": f"ray_raysisa_exact_deadline_seconds{selector}", "values": "600x30"},
            ],
            "alert_rule_test": [_alert("RaysisaRequestPastDeadline", "14m", []),
                                _alert("RaysisaRequestPastDeadline", "16m", [critical])],
        },
        {   # shard 2 sits at the bound of 3 updates; shard 1 below it
            "interval": "1m",
            "input_series": [
                {"series": 'ray_raysisa_shard_debt_updates{run="s3://b/runs/x",shard="2"}', "values": "3x30"},
                {"series": 'ray_raysisa_shard_debt_updates{run="s3://b/runs/x",shard="1"}', "values": "2x30"},
                {"series": f"ray_raysisa_debt_bound_updates{selector}", "values": "3x30"},
            ],
            "alert_rule_test": [_alert("RaysisaShardOverDebtBound", "10m", []),
                                _alert("RaysisaShardOverDebtBound", "20m", [{**warning, "shard": "2"}])],
        },
        {   # the heartbeat stops after 10 minutes (the series vanishes, as a dead actor's does)
            "interval": "1m",
            "input_series": [{"series": f"ray_raysisa_coordinator_heartbeat_timestamp_seconds{selector}", "values": "0+60x10"}],
            "alert_rule_test": [_alert("RaysisaCoordinatorDown", "12m", []),
                                _alert("RaysisaCoordinatorDown", "18m", [critical])],
        },
        {   # pending requests grow by one a minute; a steady backlog does not fire
            "interval": "1m",
            "input_series": [
                {"series": 'ray_raysisa_requests_open{run="s3://b/runs/x",state="pending"}', "values": "0+1x90"},
                {"series": 'ray_raysisa_requests_open{run="steady",state="pending"}', "values": "5x90"},
            ],
            "alert_rule_test": [_alert("RaysisaBacklogGrowing", "20m", []),
                                _alert("RaysisaBacklogGrowing", "70m", [warning])],
        },
    ]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    done = _promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("stage", ["deadline", "fires"])
def test_the_rule_tests_fail_when_an_alert_is_wrong(tmp_path, stage):
    """A wrong expectation makes ``promtool test rules`` fail: the test above can fail."""
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    at, expected = ("10m", [{"run": "r", "severity": "critical"}]) if stage == "deadline" else ("20m", [])
    tests = [{
        "interval": "1m",
        "input_series": [
            {"series": 'ray_raysisa_oldest_open_request_age_seconds{run="r"}', "values": "0+60x30"},
            {"series": 'ray_raysisa_exact_deadline_seconds{run="r"}', "values": "600x30"},
        ],
        "alert_rule_test": [_alert("RaysisaRequestPastDeadline", at, expected)],
    }]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    assert _promtool("test", "rules", "tests.yaml", cwd=tmp_path).returncode == 1
