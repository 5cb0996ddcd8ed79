"""What a budget alert becomes: a log line, a Prometheus counter and a signed webhook event.

BudgetGuard reports each limit once per tenant, period and level; this hook fans it out. It runs
on the request's path after the money is charged, so it never raises and makes no HTTP call
(the webhook is only enqueued; the ``webhooks`` workers deliver it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from shared.cost.ledger import BudgetAlert

log = logging.getLogger("pressline.cost.alerts")

#: ``publish(event_type, data)``: enqueue a signed webhook event (see shared.outbound.publish_event).
Publish = Callable[[str, Mapping[str, Any]], object]


class BudgetAlerts:
    """A CostAccounting/BudgetGuard ``on_alert`` hook.

    Parameters:
      registry(CollectorRegistry): Where ``pressline_budget_alerts_total{level, period}`` lives.
      publish: Enqueues the webhook event; None when no endpoint is configured.
    """

    def __init__(self, registry: CollectorRegistry, publish: Publish | None = None) -> None:
        self.publish = publish
        self.counter = Counter(
            "pressline_budget_alerts",
            "Budget limits reached (each reported once per tenant, period and level).",
            ("level", "period"),
            registry=registry,
        )

    def __call__(self, alert: BudgetAlert) -> None:
        event = alert.to_event()
        self.counter.labels(alert.level, alert.period.value).inc()
        log.warning(
            "budget %s limit reached: tenant %s, %s %s, spent $%s of $%s",
            alert.level,
            alert.tenant,
            alert.period.value,
            alert.period_id,
            event["spent_usd"],
            event["limit_usd"],
            extra={
                "event_type": alert.event_type,
                "tenant": alert.tenant,
                "period": alert.period.value,
                "period_id": alert.period_id,
                "level": alert.level,
                "limit_pico_usd": alert.limit_pico,
                "spent_pico_usd": alert.spent_pico,
            },
        )
        if self.publish is None:
            return
        try:
            self.publish(alert.event_type, event)
        except Exception:  # the charge stands and the line above is logged; say the event is lost
            log.exception(
                "budget alert webhook could not be enqueued", extra={"event_type": alert.event_type}
            )
