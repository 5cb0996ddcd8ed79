"""Per-tenant budgets per UTC day and month: reserve the worst case, then settle the real cost.

Check-then-charge lets N concurrent requests each see room for one and all go (other gateways'
users report exactly this).  Here :meth:`BudgetGuard.reserve` is one Lua script that refuses
when ``spent + outstanding holds + estimate > hard`` for ANY period and otherwise records the
hold — atomically, so 20 concurrent requests can never all see the same headroom.  Spent is
the ledger's own per-period ``cost_pico`` counter (one source of truth).  :meth:`settle` frees
the hold and charges the actual cost in one script (with the ledger entry when given one);
:meth:`release` frees a hold that consumed nothing.  Holds expire (``reservation_ttl_s``, by
Redis' clock) so a crashed process cannot keep a tenant's budget.  A tenant with no hard limit
has nothing to protect: its reservation holds nothing and costs one HMGET.

The guarantee: spend stays within the hard limit as long as each settled cost is at most its
reserved estimate — which :func:`worst_case_cost` makes true by bounding input tokens by the
prompt's UTF-8 bytes and output by ``max_tokens`` (the proxy must send that cap upstream).
Limits reached (soft or hard) are reported once per period as :class:`BudgetAlert`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, cast

import redis

from shared.cost.estimate import max_input_tokens
from shared.cost.ledger import (
    LUA_MONEY,
    BudgetAlert,
    CostEntry,
    CostKeys,
    CostLedger,
    Period,
    check_tenant,
    period_id,
)
from shared.cost.prices import Price, format_usd

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = [
    "BudgetAlert",
    "BudgetExceeded",
    "BudgetGuard",
    "BudgetLimits",
    "BudgetStatus",
    "Period",
    "Reservation",
    "worst_case_cost",
]

log = logging.getLogger("pressline.cost.budget")

#: Drops expired holds (at most 256 a call) from the total.  Uses KEYS[2..4] (expiry, amount, total).
_PURGE = """
local function purge(now)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 256)
  for _, id in ipairs(ids) do
    local held = redis.call('HGET', KEYS[3], id)
    if held then
      redis.call('DECRBY', KEYS[4], held)
      redis.call('HDEL', KEYS[3], id)
    end
    redis.call('ZREM', KEYS[2], id)
  end
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

#: KEYS: limits, hold expiry, hold amount, hold total, day counters, month counters.
#: ARGV: reservation id, amount, ttl ms.  -> {1, expires_ms}, {2} (no hard limit: nothing to hold)
#: or {0, period, hard, spent, held}.
_RESERVE = (
    LUA_MONEY
    + _PURGE
    + """
local hards = redis.call('HMGET', KEYS[1], 'day:hard', 'month:hard')
if not hards[1] and not hards[2] then return {2} end
local now = clock()
purge(now)
local held = redis.call('GET', KEYS[4]) or '0'
local wanted = add(parse(held), parse(ARGV[2]))
for n, p in ipairs({{'day', KEYS[5]}, {'month', KEYS[6]}}) do
  local hard = hards[n]
  if hard then
    local spent = redis.call('HGET', p[2], 'cost_pico') or '0'
    if gt(add(parse(spent), wanted), parse(hard)) then return {0, p[1], hard, spent, held} end
  end
end
local ttl = tonumber(ARGV[3])
local expires = now + ttl
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
redis.call('INCRBY', KEYS[4], ARGV[2])
for k = 2, 4 do
  if redis.call('PTTL', KEYS[k]) < ttl + 60000 then redis.call('PEXPIRE', KEYS[k], ttl + 60000) end
end
return {1, string.format('%d', expires)}
"""
)

#: KEYS: -, hold expiry, hold amount, hold total.  ARGV: reservation id or ''.  -> {freed, total}.
_RELEASE = (
    _PURGE
    + """
purge(clock())
local freed = 0
if ARGV[1] ~= '' then
  local held = redis.call('HGET', KEYS[3], ARGV[1])
  if held then
    redis.call('DECRBY', KEYS[4], held)
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    freed = 1
  end
end
return {freed, redis.call('GET', KEYS[4]) or '0'}
"""
)


class BudgetExceeded(Exception):
    """A hard limit would be passed: refuse before any upstream call (the route answers 402)."""

    def __init__(
        self,
        tenant: str,
        period: Period,
        limit_pico: int,
        spent_pico: int,
        held_pico: int,
        estimate_pico: int,
    ) -> None:
        self.tenant = tenant
        self.period = period
        self.limit_pico = limit_pico
        self.spent_pico = spent_pico
        self.held_pico = held_pico
        self.estimate_pico = estimate_pico
        super().__init__(
            f"tenant {tenant} would pass its {period.value} budget: limit ${format_usd(limit_pico)}, "
            f"spent ${format_usd(spent_pico)}, held by requests in flight ${format_usd(held_pico)}, "
            f"this request up to ${format_usd(estimate_pico)}"
        )

    def detail(self) -> dict[str, Any]:
        """For the 402 body: exact integers and exact dollar strings."""
        return {
            "period": self.period.value,
            "limit_usd": format_usd(self.limit_pico),
            "spent_usd": format_usd(self.spent_pico),
            "reserved_usd": format_usd(self.held_pico),
            "request_max_usd": format_usd(self.estimate_pico),
            "limit_pico_usd": self.limit_pico,
            "spent_pico_usd": self.spent_pico,
            "reserved_pico_usd": self.held_pico,
            "request_max_pico_usd": self.estimate_pico,
        }


@dataclass(frozen=True)
class Reservation:
    """A hold of ``amount_pico`` against every period's budget until settled, released or expired."""

    reservation_id: str
    tenant: str
    amount_pico: int
    expires_at_ms: int  # 0: nothing was held (the tenant has no hard limit)

    @property
    def held(self) -> bool:
        return self.expires_at_ms > 0


@dataclass(frozen=True)
class BudgetLimits:
    hard_pico: int | None = None
    soft_pico: int | None = None


@dataclass(frozen=True)
class BudgetStatus:
    tenant: str
    limits: dict[Period, BudgetLimits]
    spent: dict[Period, int]
    held_pico: int


def worst_case_cost(
    price: Price,
    prompt_text: str,
    max_tokens: int | None,
    *,
    message_count: int = 1,
    default_max_tokens: int = 4096,
) -> int:
    """The most a request can cost, to reserve before the call.

    Input: the prompt's UTF-8 bytes plus chat overhead, all at the full input price (a byte-level
    BPE token is at least one byte, so this cannot undercount text; images are not counted).
    Output: ``max_tokens``, else ``default_max_tokens`` (pass ``Settings.proxy_default_max_tokens``),
    which the proxy must then send upstream as the cap.
    """
    output = default_max_tokens if max_tokens is None else max_tokens
    if output < 0:
        raise ValueError("max_tokens must be non-negative")
    return max_input_tokens(prompt_text, message_count) * price.input + output * price.output


class BudgetGuard:
    """Budgets, holds and settlement for tenants; alerts go to ``on_alert`` (and are returned)."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        ledger: CostLedger | None = None,
        reservation_ttl_s: float = 900.0,
        on_alert: Callable[[BudgetAlert], None] | None = None,
    ) -> None:
        self.client = client
        self.keys = CostKeys(namespace)
        self.ledger = ledger if ledger is not None else CostLedger(client, namespace)
        self.reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self.on_alert = on_alert
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        client: redis.Redis,
        *,
        ledger: CostLedger | None = None,
        on_alert: Callable[[BudgetAlert], None] | None = None,
    ) -> BudgetGuard:
        return cls(
            client,
            settings.namespace,
            ledger=ledger if ledger is not None else CostLedger.from_settings(settings, client),
            reservation_ttl_s=settings.budget_reservation_ttl_s,
            on_alert=on_alert,
        )

    # -- limits --------------------------------------------------------------------------------------

    def set_budget(
        self, tenant: str, period: Period, *, hard_pico: int | None = None, soft_pico: int | None = None
    ) -> None:
        """Replace the period's limits (None: no such limit). A soft limit above the hard one is refused."""
        check_tenant(tenant)
        for value in (hard_pico, soft_pico):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"a limit must be a non-negative int of pico-dollars, got {value!r}")
        if hard_pico is not None and soft_pico is not None and soft_pico > hard_pico:
            raise ValueError("the soft limit must not be above the hard limit")
        key = self.keys.limits(tenant)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(key, f"{period.value}:hard", f"{period.value}:soft")
            for level, value in (("hard", hard_pico), ("soft", soft_pico)):
                if value is not None:
                    pipe.hset(key, f"{period.value}:{level}", str(value))
            pipe.execute()

    def clear_budget(self, tenant: str, period: Period | None = None) -> None:
        periods = [period] if period is not None else list(Period)
        fields = [f"{p.value}:{level}" for p in periods for level in ("hard", "soft")]
        self.client.hdel(self.keys.limits(check_tenant(tenant)), *fields)

    def budgets(self, tenant: str) -> dict[Period, BudgetLimits]:
        raw = cast(dict[Any, Any], self.client.hgetall(self.keys.limits(check_tenant(tenant))))
        values = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        return {
            p: BudgetLimits(hard_pico=values.get(f"{p.value}:hard"), soft_pico=values.get(f"{p.value}:soft"))
            for p in Period
            if f"{p.value}:hard" in values or f"{p.value}:soft" in values
        }

    def status(self, tenant: str, at: datetime | date | int | None = None) -> BudgetStatus:
        """Limits, spend per period and what holds in flight keep back (expired holds dropped)."""
        held = self._release(keys=["-", *self.keys.holds(check_tenant(tenant))], args=[""])
        spent = {p: self.ledger.totals(tenant, p, at).cost_pico for p in Period}
        return BudgetStatus(tenant, self.budgets(tenant), spent, int(cast(list[Any], held)[1]))

    # -- reserve, settle, release --------------------------------------------------------------------

    def reserve(
        self, tenant: str, estimate_pico: int, *, at: datetime | date | int | None = None
    ) -> Reservation:
        """Hold ``estimate_pico`` or raise BudgetExceeded; nothing is held when refused."""
        check_tenant(tenant)
        if estimate_pico < 0:
            raise ValueError("the estimate must be non-negative")
        reservation_id = uuid.uuid4().hex
        day, month = period_id(Period.DAY, at), period_id(Period.MONTH, at)
        keys = [
            self.keys.limits(tenant),
            *self.keys.holds(tenant),
            self.keys.counters(tenant, Period.DAY, day),
            self.keys.counters(tenant, Period.MONTH, month),
        ]
        reply = cast(
            list[Any], self._reserve(keys=keys, args=[reservation_id, estimate_pico, self.reservation_ttl_ms])
        )
        if not int(reply[0]):
            period, limit, spent, held = (r.decode() if isinstance(r, bytes) else str(r) for r in reply[1:5])
            raise BudgetExceeded(tenant, Period(period), int(limit), int(spent), int(held), estimate_pico)
        if int(reply[0]) == 2:  # no hard limit: nothing is held, the settle still charges once
            return Reservation(reservation_id, tenant, estimate_pico, 0)
        return Reservation(reservation_id, tenant, estimate_pico, int(reply[1]))

    def settle(self, reservation: Reservation, actual: int | CostEntry) -> tuple[BudgetAlert, ...]:
        """Free the hold and charge the real cost in one script; returns (and reports) alerts.

        Pass the :class:`CostEntry` to write the ledger entry in the same step (preferred);
        a bare amount only adds to spend.  A second settle of one reservation changes nothing.
        The cost is charged even when the hold has already expired: the money was spent.
        """
        if isinstance(actual, CostEntry):
            if actual.tenant != reservation.tenant:
                raise ValueError("the entry's tenant is not the reservation's")
            # Nothing held: the entry's own (request, attempt) mark keeps a repeat from charging twice.
            held = reservation.reservation_id if reservation.held else None
            charge = self.ledger.record(actual, reservation_id=held)
        else:
            charge = self.ledger.charge(reservation.tenant, actual, reservation_id=reservation.reservation_id)
        self._report(charge.alerts)
        return charge.alerts

    def record(self, entry: CostEntry) -> tuple[BudgetAlert, ...]:
        """Record spend that had no hold (it still counts, and may raise alerts)."""
        charge = self.ledger.record(entry)
        self._report(charge.alerts)
        return charge.alerts

    def release(self, reservation: Reservation) -> bool:
        """Free a hold whose request consumed nothing; False when it was already gone."""
        keys = ["-", *self.keys.holds(reservation.tenant)]
        reply = cast(list[Any], self._release(keys=keys, args=[reservation.reservation_id]))
        return bool(int(reply[0]))

    def _report(self, alerts: tuple[BudgetAlert, ...]) -> None:
        if self.on_alert is None:
            return
        for alert in alerts:
            try:
                self.on_alert(alert)
            except Exception:  # the money is already charged: a failing hook must not undo that
                log.exception("budget on_alert hook failed for %s", alert.event_type)
