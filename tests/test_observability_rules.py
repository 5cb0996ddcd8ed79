"""The rules pass ``promtool check rules`` and their unit tests (``promtool test rules``); the
dashboards are up to date with their generator and are valid Grafana dashboard JSON, provisioned
into "AI Workflows / Runtime".  Every panel query is parsed by a real Prometheus in
tests/test_observability_e2e.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from dashboards.build import DASHBOARDS, OUT
from infra.prometheus import RULES, ensure_binary

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "dashboards" / "grafana" / "provisioning"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ensure_binary("promtool", "prometheus"), *args], capture_output=True, text=True, cwd=RULES.parent
    )


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 18 rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = _promtool("test", "rules", "tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "rules.yml"
    broken.write_text(
        RULES.read_text().replace("max by (queue_name) (pressline_queue_dead_letters)", "max by (")
    )
    result = _promtool("check", "rules", str(broken))
    assert result.returncode != 0


def test_the_slo_alerts_exist() -> None:
    alerts = {
        r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r
    }
    assert {
        "PresslineEnqueueToStartSlow",
        "PresslineJobSuccessBelowSLO",
        "PresslineDeadLettersGrowing",
        "PresslineProviderErrorBudgetBurn",
        "PresslineWebhookVerificationFailures",
    } <= alerts


def test_checked_in_dashboards_match_the_generator() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashboards.build", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in OUT.glob("*.json")) == sorted(f"{d.uid}.json" for d in DASHBOARDS)


def test_every_dashboard_is_valid_grafana_dashboard_json() -> None:
    uids, titles = set(), set()
    for path in sorted(OUT.glob("*.json")):
        board = json.loads(path.read_text())
        assert isinstance(board["title"], str) and board["title"] and board["title"] not in titles
        assert isinstance(board["uid"], str) and 0 < len(board["uid"]) <= 40 and board["uid"] not in uids
        uids.add(board["uid"])
        titles.add(board["title"])
        assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
        assert isinstance(board["time"]["from"], str) and isinstance(board["templating"], dict)
        panel_ids = [p["id"] for p in board["panels"]]
        assert len(panel_ids) == len(set(panel_ids)) and panel_ids
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            assert panel["type"] in {"timeseries", "stat", "logs"}, panel["type"]
            assert isinstance(panel["options"], dict)
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
            assert (grid["x"], grid["y"]) not in cells  # no two panels on one spot
            cells.add((grid["x"], grid["y"]))
            assert panel["datasource"]["uid"] in {"prometheus", "loki"}
            assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
    assert titles == {
        "Queue health",
        "Task retries and dead letters",
        "Provider latency",
        "Cache hit rate and savings",
        "Costs and budgets",
        "WordPress and webhook health",
    }


def test_provisioning_loads_the_dashboards_into_the_folder_with_linked_datasources() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "pressline.yml").read_text())["providers"][0]
    assert provider["folder"] == "AI Workflows / Runtime" and provider["type"] == "file"
    sources = {
        d["uid"]: d
        for d in yaml.safe_load((PROVISIONING / "datasources" / "pressline.yml").read_text())["datasources"]
    }
    assert {"prometheus", "loki", "tempo"} <= set(sources)
    field = sources["loki"]["jsonData"]["derivedFields"][0]
    assert field["datasourceUid"] == "tempo"
    import re

    line = json.dumps({"message": "x", "trace_id": "0af7651916cd43dd8448eb211c80319c"})
    match = re.search(field["matcherRegex"].replace("\\s", r"\s"), line)
    assert match and match.group(1) == "0af7651916cd43dd8448eb211c80319c"
