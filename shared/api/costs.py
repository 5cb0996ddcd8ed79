"""GET /v1/costs and GET /v1/costs/requests/{id}: the tenant's spend, from the cost ledger."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from shared.auth import Scope
from shared.cost.budget import BudgetGuard
from shared.cost.ledger import CostEntry, CostLedger, Period
from shared.cost.prices import format_usd

from .errors import ApiError
from .guard import Guard
from .responses import ApiResponse


class CostsApi:
    """Spend per day and month, budgets, recent ledger entries, and one request's cost.

    Parameters:
      guard(Guard)
      ledger(CostLedger)
      budgets(BudgetGuard)
    """

    def __init__(self, guard: Guard, ledger: CostLedger, budgets: BudgetGuard) -> None:
        self.guard = guard
        self.ledger = ledger
        self.budgets = budgets

    def summary(self, *, authorization: str | None, count: str | None) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.JOBS_READ)
        try:
            limit = min(max(int(count or 20), 1), 100)
        except ValueError:
            raise ApiError(400, "invalid_count", "count must be a whole number from 1 to 100") from None
        periods: dict[str, Any] = {}
        for period in (Period.DAY, Period.MONTH):
            totals = self.ledger.totals(principal.tenant, period)
            periods[period.value] = {
                "period_id": totals.period_id,
                "cost_usd": format_usd(totals.cost_pico),
                "cost_pico_usd": totals.cost_pico,
                "input_tokens": totals.input_tokens,
                "output_tokens": totals.output_tokens,
                "cached_input_tokens": totals.cached_input_tokens,
                "by_model_pico_usd": totals.by_model,
            }
        entries = [_entry(e) for e in reversed(self.ledger.entries(principal.tenant, count=limit))]
        status = self.budgets.status(principal.tenant)
        for period, limits in status.limits.items():
            periods[period.value]["hard_limit_usd"] = (
                format_usd(limits.hard_pico) if limits.hard_pico else None
            )
            periods[period.value]["soft_limit_usd"] = (
                format_usd(limits.soft_pico) if limits.soft_pico else None
            )
        body = {
            "tenant": principal.tenant,
            "periods": periods,
            "held_by_requests_in_flight_usd": format_usd(status.held_pico),
            "entries": entries,
        }
        return ApiResponse(200, body)

    def request(self, *, authorization: str | None, request_id: str) -> ApiResponse:
        principal = self.guard.principal(authorization, Scope.JOBS_READ)
        found = self.ledger.request(request_id) if request_id.isalnum() and len(request_id) <= 64 else None
        if found is None or found.tenant != principal.tenant:
            raise ApiError(404, "request_not_found", "there is no such request")
        return ApiResponse(
            200,
            {
                "request_id": found.request_id,
                "job_id": found.job_id,
                "cost_usd": format_usd(found.cost_pico),
                "cost_pico_usd": found.cost_pico,
                "attempts": found.attempts,
                "usage": asdict(found.usage),
                "entries": [_entry(e) for e in found.entries],
            },
        )


def _entry(entry: CostEntry) -> dict[str, Any]:
    return {
        "request_id": entry.request_id,
        "job_id": entry.job_id,
        "provider": entry.provider,
        "model": entry.model,
        "target": entry.target,
        "usage": asdict(entry.usage),
        "cost_usd": format_usd(entry.cost_pico),
        "cost_pico_usd": entry.cost_pico,
        "price_version": entry.price_version,
        "at_ms": entry.ts_ms,
    }
