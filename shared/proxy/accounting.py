"""Budgets and the cost ledger, as the proxy uses them: reserve, then settle (never check-then-charge).

Before any upstream call the request's worst-case cost (its prompt at full input price plus its
``max_tokens`` at the output price, on the dearest of its route's targets) is held against the
tenant's budgets; a request that would pass a hard limit is refused with 402.  When it ends, the
hold becomes the real cost: the provider's reported usage x the price table, or — when the stream
ended before usage came — an estimate with the model's tokenizer where one runs offline, marked
``estimated``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.api.errors import ApiError
from shared.cost.budget import BudgetAlert, BudgetExceeded, BudgetGuard, Reservation, worst_case_cost
from shared.cost.estimate import estimate_usage
from shared.cost.ledger import CostEntry
from shared.cost.prices import Price, PriceTable, UnknownModel, Usage

from .routing import Target
from .usage import Reported

log = logging.getLogger(__name__)


class CostAccounting:
    """Parameters:
    prices(PriceTable)
    budgets(BudgetGuard): Holds, spend and the ledger (it writes the ledger entry on settle).
    default_max_tokens(int): The output cap assumed when a request names none.
    on_alert: Called with each soft/hard budget alert (metric, log line, signed webhook).
    """

    def __init__(
        self,
        prices: PriceTable,
        budgets: BudgetGuard,
        default_max_tokens: int,
        on_alert: Callable[[BudgetAlert], None] | None = None,
    ) -> None:
        self.prices = prices
        self.budgets = budgets
        self.default_max_tokens = default_max_tokens
        self.on_alert = on_alert or _log_alert

    def price(self, target: Target) -> Price:
        try:
            return self.prices.price(target.provider, target.model)
        except UnknownModel:
            raise ApiError(
                503, "unpriced_model", f"{target.label} has no price; it cannot be metered"
            ) from None

    def reserve(
        self, tenant: str, targets: list[Target], prompt_text: str, max_tokens: int | None
    ) -> Reservation:
        estimate = max(
            worst_case_cost(
                self.price(t), prompt_text, max_tokens, default_max_tokens=self.default_max_tokens
            )
            for t in targets
        )
        try:
            return self.budgets.reserve(tenant, estimate)
        except BudgetExceeded as e:
            raise ApiError(402, "budget_exceeded", str(e), details=[e.detail()]) from None

    def settle(
        self,
        reservation: Reservation,
        *,
        request_id: str,
        tenant: str,
        target: Target,
        reported: Reported,
        prompt_text: str,
        job_id: str | None,
    ) -> int:
        usage = _usage(reported, prompt_text, target.model)
        entry = CostEntry.priced(
            self.price(target),
            usage,
            request_id=request_id,
            tenant=tenant,
            job_id=job_id,
            target=target.label,
        )
        for alert in self.budgets.settle(reservation, entry):
            try:
                self.on_alert(alert)
            except Exception:  # the charge stands; an alert that cannot be sent must not fail the request
                log.exception("budget alert could not be delivered")
        return entry.cost_pico

    def release(self, reservation: Reservation) -> None:
        self.budgets.release(reservation)


def _usage(reported: Reported, prompt_text: str, model: str) -> Usage:
    """The provider's figures when complete; otherwise an estimate (keeping any exact input count)."""
    if reported.complete:
        return Usage(
            input_tokens=reported.input_tokens,
            output_tokens=reported.output_tokens,
            cached_input_tokens=reported.cached_input_tokens,
        )
    estimate = estimate_usage(prompt_text, reported.completion_text, model=model)
    return Usage(
        input_tokens=reported.input_tokens or estimate.input_tokens,
        output_tokens=max(reported.output_tokens, estimate.output_tokens),
        cached_input_tokens=reported.cached_input_tokens,
        estimated=True,
    )


def _log_alert(alert: BudgetAlert) -> None:
    log.warning("budget alert: %s", alert.to_event())
