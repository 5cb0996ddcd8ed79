"""Operator commands for budgets, spend and prices. Amounts are dollars, exact to the pico-dollar.

python -m shared.cost.cli budget set --tenant acme --period month --hard 5.00 --soft 4.00
python -m shared.cost.cli budget show --tenant acme        # JSON: limits, spend, holds in flight
python -m shared.cost.cli budget clear --tenant acme [--period day]
python -m shared.cost.cli spend --tenant acme [--period day] [--entries 20]
python -m shared.cost.cli prices                           # the table in force (JSON lines)

``budget set`` replaces the period's limits: a limit not given is removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from shared.config import Settings
from shared.cost.budget import BudgetGuard
from shared.cost.ledger import CostLedger, Period
from shared.cost.prices import PriceTable, format_usd, parse_usd
from shared.redis_client import redis_client


def _dollars(raw: str) -> int:
    try:
        return parse_usd(raw)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _limit(pico: int | None) -> dict[str, Any] | None:
    return None if pico is None else {"usd": format_usd(pico), "pico_usd": pico}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.cost.cli", description="Budgets and spend.")
    sub = parser.add_subparsers(dest="command", required=True)
    budget = sub.add_parser("budget", help="per-tenant budgets").add_subparsers(dest="action", required=True)
    setter = budget.add_parser("set", help="replace a period's hard and soft limits")
    setter.add_argument("--tenant", required=True)
    setter.add_argument("--period", required=True, choices=[p.value for p in Period])
    setter.add_argument("--hard", type=_dollars, default=None, help="dollars; requests past it get 402")
    setter.add_argument("--soft", type=_dollars, default=None, help="dollars; crossing it alerts once")
    show = budget.add_parser("show", help="limits, spend and holds as JSON")
    show.add_argument("--tenant", required=True)
    clear = budget.add_parser("clear", help="remove limits")
    clear.add_argument("--tenant", required=True)
    clear.add_argument("--period", choices=[p.value for p in Period], default=None)
    spend = sub.add_parser("spend", help="a tenant's totals and latest ledger entries as JSON")
    spend.add_argument("--tenant", required=True)
    spend.add_argument("--period", choices=[p.value for p in Period], default=Period.MONTH.value)
    spend.add_argument("--entries", type=int, default=10)
    sub.add_parser("prices", help="the price table in force, per token in pico-dollars")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.command == "prices":
        table = PriceTable.load(settings.price_table_path)
        for provider, model in table.models():
            for price in table.versions(provider, model):
                print(json.dumps({**asdict(price), "effective_from": price.version}))
        return 0
    client = redis_client(settings)
    ledger = CostLedger.from_settings(settings, client)
    guard = BudgetGuard.from_settings(settings, client, ledger=ledger)
    try:
        if args.command == "spend":
            totals = ledger.totals(args.tenant, Period(args.period))
            out = {**asdict(totals), "cost_usd": format_usd(totals.cost_pico)}
            out["entries"] = [
                {**entry.fields(), "entry_id": entry.entry_id, "cost_usd": format_usd(entry.cost_pico)}
                for entry in ledger.entries(args.tenant, count=args.entries)
            ]
            print(json.dumps(out, indent=2))
        elif args.action == "set":
            guard.set_budget(args.tenant, Period(args.period), hard_pico=args.hard, soft_pico=args.soft)
            print(f"budget {args.tenant}/{args.period}: hard {_limit(args.hard)}, soft {_limit(args.soft)}")
        elif args.action == "clear":
            guard.clear_budget(args.tenant, Period(args.period) if args.period else None)
            print(f"cleared budget of {args.tenant} ({args.period or 'all periods'})")
        else:
            status = guard.status(args.tenant)
            print(
                json.dumps(
                    {
                        "tenant": args.tenant,
                        "held": _limit(status.held_pico),
                        "periods": {
                            p.value: {
                                "hard": _limit(status.limits[p].hard_pico) if p in status.limits else None,
                                "soft": _limit(status.limits[p].soft_pico) if p in status.limits else None,
                                "spent": _limit(status.spent[p]),
                            }
                            for p in Period
                        },
                    },
                    indent=2,
                )
            )
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
