"""Token-accurate cost: prices, usage, estimates, the Redis cost ledger and budget guards.

Money is integer pico-dollars (10^-12 USD) everywhere, so token x price sums are exact; dollars
are shown as exact Decimals (:func:`format_usd`).
"""

from shared.cost.budget import (
    BudgetExceeded,
    BudgetGuard,
    BudgetLimits,
    BudgetStatus,
    Reservation,
    worst_case_cost,
)
from shared.cost.estimate import count_tokens, estimate_tokens, estimate_usage
from shared.cost.ledger import BudgetAlert, Charge, CostEntry, CostLedger, Period, RequestCost, Totals
from shared.cost.prices import (
    Price,
    PriceTable,
    PriceTableError,
    UnknownModel,
    Usage,
    format_usd,
    parse_usd,
    to_dollars,
)

__all__ = [
    "BudgetAlert",
    "BudgetExceeded",
    "BudgetGuard",
    "BudgetLimits",
    "BudgetStatus",
    "Charge",
    "CostEntry",
    "CostLedger",
    "Period",
    "Price",
    "PriceTable",
    "PriceTableError",
    "RequestCost",
    "Reservation",
    "Totals",
    "UnknownModel",
    "Usage",
    "count_tokens",
    "estimate_tokens",
    "estimate_usage",
    "format_usd",
    "parse_usd",
    "to_dollars",
    "worst_case_cost",
]
