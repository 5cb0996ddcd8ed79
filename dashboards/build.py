"""Generate Pressline's Grafana dashboards: ``python -m dashboards.build`` (``--check`` to verify).

Written with Grafana's own typed builders (``grafana-foundation-sdk``), so a panel or query field
that Grafana's schema does not have fails here, not in Grafana.  The JSON goes to
``dashboards/grafana/dashboards/`` (checked in; provisioned into the folder "AI Workflows /
Runtime" by ``dashboards/grafana/provisioning``).  Queue-health gauges are read by every worker
tree, so they are aggregated with ``max by (queue_name)``, never summed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, logs, loki, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

__all__ = ["DASHBOARDS", "OUT", "Panel", "build_all", "main"]

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards"
FOLDER = "AI Workflows / Runtime"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
LOKI = DataSourceRef(type_val="loki", uid="loki")


@dataclass(frozen=True)
class Panel:
    """One panel: a title, its queries (``(expr, legend)``), a unit, and its kind."""

    title: str
    queries: Sequence[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | logs
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: Sequence[Panel]


DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard(
        "pressline-queues",
        "Queue health",
        "What waits, what is held, for how long; read from Redis at scrape time.",
        (
            Panel(
                "Backlog (not yet delivered)",
                [("max by (queue_name) (pressline_queue_backlog)", "{{queue_name}}")],
            ),
            Panel(
                "Pending (delivered, not acked; crashed consumers' included)",
                [("max by (queue_name) (pressline_queue_pending)", "{{queue_name}}")],
            ),
            Panel(
                "Oldest waiting message",
                [("max by (queue_name) (pressline_queue_oldest_waiting_age_seconds)", "{{queue_name}}")],
                unit="s",
            ),
            Panel(
                "Oldest pending message",
                [("max by (queue_name) (pressline_queue_oldest_pending_age_seconds)", "{{queue_name}}")],
                unit="s",
            ),
            Panel(
                "Delayed (ETA, backoff)",
                [("max by (queue_name) (pressline_queue_delayed)", "{{queue_name}}")],
            ),
            Panel(
                "In progress",
                [("sum by (queue_name) (dramatiq_messages_inprogress)", "{{queue_name}}")],
            ),
            Panel(
                "Enqueue to start, p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (queue_name, le) "
                        "(rate(pressline_message_start_delay_seconds_bucket[5m])))",
                        "{{queue_name}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Throughput",
                [("sum by (queue_name) (rate(dramatiq_messages_total[5m]))", "{{queue_name}}")],
                unit="ops",
            ),
            Panel("Redis readable", [("min(pressline_queue_health_up)", "up")], kind="stat"),
            Panel(
                "Error log lines",
                [('{service=~".+", level=~"error|critical"}', "")],
                kind="logs",
                description="Each line's trace_id links to its trace (the Loki datasource's derived field).",
            ),
        ),
    ),
    Dashboard(
        "pressline-retries",
        "Task retries and dead letters",
        "Stage failures, retries, dead letters and job outcomes.",
        (
            Panel(
                "Retries by stage",
                [
                    (
                        "sum by (queue_name, actor_name) (rate(dramatiq_message_retries_total[5m]))",
                        "{{actor_name}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Failed attempts by stage",
                [
                    (
                        "sum by (queue_name, actor_name) (rate(dramatiq_message_errors_total[5m]))",
                        "{{actor_name}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Dead-lettered by stage",
                [
                    (
                        "sum by (queue_name, actor_name) (increase(dramatiq_message_rejects_total[1h]))",
                        "{{actor_name}}",
                    )
                ],
            ),
            Panel(
                "Dead-letter depth",
                [("max by (queue_name) (pressline_queue_dead_letters)", "{{queue_name}}")],
            ),
            Panel(
                "Jobs finished",
                [("sum by (outcome) (rate(pressline_jobs_finished_total[5m]))", "{{outcome}}")],
                unit="ops",
            ),
            Panel(
                "Job success ratio",
                [
                    (
                        'sum(increase(pressline_jobs_finished_total{outcome="completed"}[1h])) '
                        "/ sum(increase(pressline_jobs_finished_total[1h]))",
                        "success",
                    )
                ],
                unit="percentunit",
                kind="stat",
            ),
            Panel(
                "Stage duration p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (actor_name, le) "
                        "(rate(dramatiq_message_duration_milliseconds_bucket[5m])))",
                        "{{actor_name}}",
                    )
                ],
                unit="ms",
            ),
        ),
    ),
    Dashboard(
        "pressline-providers",
        "Provider latency",
        "LLM upstreams: time to first token, totals, errors, retries, breakers.",
        (
            Panel(
                "Time to first token p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (provider, model, le) "
                        "(rate(pressline_llm_time_to_first_token_seconds_bucket[5m])))",
                        "{{provider}}/{{model}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Request duration p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (provider, model, le) "
                        "(rate(pressline_llm_request_duration_seconds_bucket[5m])))",
                        "{{provider}}/{{model}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Attempts by outcome",
                [
                    (
                        "sum by (provider, outcome) (rate(pressline_llm_attempts_total[5m]))",
                        "{{provider}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Retries and failovers",
                [
                    (
                        "sum by (provider, model) (rate(pressline_llm_retries_total[5m]))",
                        "{{provider}}/{{model}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Breaker open (1) by provider",
                [('max by (provider) (pressline_llm_breaker_state{state="open"})', "{{provider}}")],
            ),
            Panel(
                "Usage estimated (no upstream usage)",
                [("sum by (provider) (rate(pressline_llm_usage_estimated_total[5m]))", "{{provider}}")],
                unit="ops",
            ),
        ),
    ),
    Dashboard(
        "pressline-cache",
        "Cache hit rate and savings",
        "The semantic cache: hits by layer, lookup time, dollars saved, entries, evictions.",
        (
            Panel(
                "Hit rate by layer",
                [
                    (
                        'sum by (layer) (rate(pressline_cache_lookups_total{outcome="hit"}[5m])) '
                        "/ sum by (layer) (rate(pressline_cache_lookups_total[5m]))",
                        "{{layer}}",
                    )
                ],
                unit="percentunit",
            ),
            Panel(
                "Lookups by outcome",
                [
                    (
                        "sum by (layer, outcome) (rate(pressline_cache_lookups_total[5m]))",
                        "{{layer}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Lookup time p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (layer, le) "
                        "(rate(pressline_cache_lookup_seconds_bucket[5m])))",
                        "{{layer}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Saved by tenant",
                [("sum by (tenant) (increase(pressline_cache_saved_usd_total[1h]))", "{{tenant}}")],
                unit="currencyUSD",
            ),
            Panel("Entries", [("max by (layer) (pressline_cache_entries)", "{{layer}}")]),
            Panel(
                "Evictions",
                [("sum by (reason) (rate(pressline_cache_evictions_total[5m]))", "{{reason}}")],
                unit="ops",
            ),
        ),
    ),
    Dashboard(
        "pressline-costs",
        "Costs and budgets",
        "Spend and tokens by tenant, provider and model; budget use; budget alerts.",
        (
            Panel(
                "Spend this month by tenant",
                [
                    (
                        "sum by (tenant) (max by (tenant, provider, model) "
                        '(pressline_tenant_spend_usd{period="month"}))',
                        "{{tenant}}",
                    )
                ],
                unit="currencyUSD",
            ),
            Panel(
                "Spend today by provider/model",
                [
                    (
                        "sum by (provider, model) (max by (tenant, provider, model) "
                        '(pressline_tenant_spend_usd{period="day"}))',
                        "{{provider}}/{{model}}",
                    )
                ],
                unit="currencyUSD",
            ),
            Panel(
                "Spend rate by provider/model",
                [
                    (
                        "sum by (provider, model) (rate(pressline_llm_cost_usd_total[5m])) * 3600",
                        "{{provider}}/{{model}}",
                    )
                ],
                unit="currencyUSD",
                description="Dollars per hour, from the proxy's counters (exact sums are in the ledger).",
            ),
            Panel(
                "Tokens by kind",
                [("sum by (kind) (rate(pressline_llm_tokens_total[5m]))", "{{kind}}")],
                unit="short",
            ),
            Panel(
                "Tokens this month by tenant",
                [('max by (tenant, kind) (pressline_tenant_tokens{period="month"})', "{{tenant}} {{kind}}")],
            ),
            Panel(
                "Budget used",
                [("max by (tenant, period) (pressline_budget_used_ratio)", "{{tenant}} {{period}}")],
                unit="percentunit",
            ),
            Panel(
                "Budget alerts",
                [
                    (
                        "sum by (level, period) (increase(pressline_budget_alerts_total[1d]))",
                        "{{level}} {{period}}",
                    )
                ],
            ),
        ),
    ),
    Dashboard(
        "pressline-wordpress-webhooks",
        "WordPress and webhook health",
        "WordPress REST calls, inbound webhooks and outbound deliveries.",
        (
            Panel(
                "WordPress requests by outcome",
                [
                    (
                        "sum by (site, outcome) (rate(pressline_wordpress_requests_total[5m]))",
                        "{{site}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "WordPress latency p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (site, le) "
                        "(rate(pressline_wordpress_request_seconds_bucket[5m])))",
                        "{{site}}",
                    )
                ],
                unit="s",
            ),
            Panel(
                "WordPress breaker (0 closed, 1 half-open, 2 open)",
                [("max by (site) (pressline_wordpress_breaker_state)", "{{site}}")],
            ),
            Panel(
                "Webhooks received by outcome",
                [("sum by (outcome) (rate(pressline_webhooks_received_total[5m]))", "{{outcome}}")],
                unit="ops",
            ),
            Panel(
                "Webhook verification failures by reason",
                [("sum by (reason) (rate(pressline_webhook_verification_failures_total[5m]))", "{{reason}}")],
                unit="ops",
            ),
            Panel(
                "Outbound deliveries by outcome",
                [
                    (
                        "sum by (event_type, outcome) "
                        "(rate(pressline_outbound_webhook_deliveries_total[5m]))",
                        "{{event_type}} {{outcome}}",
                    )
                ],
                unit="ops",
            ),
            Panel(
                "Outbound delivery p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(pressline_outbound_webhook_delivery_seconds_bucket[5m])))",
                        "p95",
                    )
                ],
                unit="s",
            ),
            Panel(
                "Outbound webhook dead letters",
                [
                    (
                        'max by (queue_name) (pressline_queue_dead_letters{queue_name="webhooks"})',
                        "{{queue_name}}",
                    )
                ],
            ),
            Panel(
                "Log lines dropped (Loki unreachable or slow)",
                [("sum by (reason) (rate(pressline_log_lines_dropped_total[5m]))", "{{reason}}")],
                unit="ops",
            ),
        ),
    ),
)


def _panel(spec: Panel, index: int) -> Any:
    """The SDK builder of one panel, placed on a 2-column grid."""
    width, height = 12, 8
    grid = GridPos(h=height, w=width, x=(index % 2) * width, y=(index // 2) * height)
    if spec.kind == "logs":
        builder: Any = logs.Panel().datasource(LOKI).show_time(True).enable_log_details(True)
        for ref, (expr, _) in enumerate(spec.queries):
            builder = builder.with_target(loki.Dataquery().expr(expr).ref_id(chr(ord("A") + ref)))
    else:
        builder = (
            (stat.Panel() if spec.kind == "stat" else timeseries.Panel())
            .datasource(PROMETHEUS)
            .unit(spec.unit)
        )
        for ref, (expr, legend) in enumerate(spec.queries):
            builder = builder.with_target(
                prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + ref))
            )
    builder = builder.title(spec.title).id(index + 1).grid_pos(grid)
    if spec.description:
        builder = builder.description(spec.description)
    return builder


def build(spec: Dashboard) -> dict[str, Any]:
    """One dashboard as Grafana's JSON model (a plain dict)."""
    board = (
        dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["pressline", "runtime"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("utc")
        .editable()
    )
    for index, panel in enumerate(spec.panels):
        board = board.with_panel(_panel(panel, index))
    result: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(board.build()))
    for panel in result["panels"]:
        if panel.get("options") is None:
            panel["options"] = {}  # the SDK leaves unset options null; Grafana expects an object
    return result


def build_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        f"{spec.uid}.json": json.dumps(build(spec), indent=2, sort_keys=True) + "\n" for spec in DASHBOARDS
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in JSON is out of date")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    files = build_all()
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text() != text
        ]
        for name in stale:
            print(f"out of date: {args.out / name} (run python -m dashboards.build)", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
