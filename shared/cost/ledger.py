"""The durable cost ledger in Redis (which runs with AOF): one entry per upstream attempt.

Each record is ONE Lua script (one round trip, atomic), which:

* appends the entry to the tenant's stream ``{ns}.cost.{tenant}.entries`` (``MAXLEN ~``);
* adds to exact integer counters (HINCRBY, never floats) for the tenant's UTC day and month —
  ``cost_pico`` there is also the spend the budget guard checks, so there is one source of truth;
* adds to the request's hash (kept ``request_ttl_s``) and to the job record's ``cost_pico_usd``
  exactly as :meth:`shared.jobs.JobStore.add_cost` does;
* frees the request's budget hold when given one, and reports soft/hard budget limits crossed
  (each once per period) as :class:`BudgetAlert` values.

It is idempotent per (request id, attempt) and per reservation, so a caller that retries a
record after a lost reply cannot bill twice.  Lua numbers are doubles (exact only to 2^53
pico-dollars, about $9,007), so the scripts never do arithmetic on amounts except through
Redis' int64 commands or the split (micro-dollars, pico remainder) helpers in :data:`LUA_MONEY`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, cast

import redis

from shared.auth.tokens import TENANT
from shared.cost.prices import Price, Usage, format_usd, to_dollars

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.jobs import JobStore

_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
#: Day counters are kept this long; month counters and the streams have no TTL.
DAY_COUNTER_TTL_S = 400 * 86400
_DAY_MARK_TTL_MS = 2 * 86400 * 1000
_MONTH_MARK_TTL_MS = 62 * 86400 * 1000
#: How long a settled reservation's id is remembered, so a repeated settle is a no-op.
SETTLED_MARK_TTL_MS = 86400 * 1000


def now_ms() -> int:
    return int(time.time() * 1000)


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"


def period_id(period: Period, at: datetime | date | int | None = None) -> str:
    """The UTC day (``2025-06-01``) or month (``2025-06``) of ``at`` (epoch ms, date or datetime)."""
    if at is None:
        at = now_ms()
    if isinstance(at, int):
        day = datetime.fromtimestamp(at / 1000, tz=UTC).date()
    elif isinstance(at, datetime):
        day = (at if at.tzinfo is None else at.astimezone(UTC)).date()
    else:
        day = at
    return day.isoformat() if period is Period.DAY else day.isoformat()[:7]


def check_tenant(tenant: str) -> str:
    if not TENANT.fullmatch(tenant):
        raise ValueError(f"bad tenant {tenant!r}: letters, digits, '-' and '_', at most 64")
    return tenant


class CostKeys:
    """Every Redis key of the ledger and the budget guard (tenants cannot contain '.')."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace

    def stream(self, tenant: str) -> str:
        return f"{self.ns}.cost.{tenant}.entries"

    def counters(self, tenant: str, period: Period, pid: str) -> str:
        return f"{self.ns}.cost.{tenant}.{period.value}.{pid}"

    def request(self, request_id: str) -> str:
        return f"{self.ns}.cost.request.{request_id}"

    def limits(self, tenant: str) -> str:
        return f"{self.ns}.budget.{tenant}.limits"

    def holds(self, tenant: str) -> tuple[str, str, str]:
        """Reservations: expiry zset, amount hash, and their running total."""
        base = f"{self.ns}.budget.{tenant}.holds"
        return f"{base}.expiry", f"{base}.amount", f"{base}.total"

    def settled(self, reservation_id: str) -> str:
        return f"{self.ns}.budget.settled.{reservation_id}"

    def alert_mark(self, tenant: str, pid: str, level: str) -> str:
        return f"{self.ns}.budget.{tenant}.alerted.{pid}.{level}"


#: Exact money in Lua: amounts as {micro-dollars, pico remainder < 10^6}, parsed from the decimal
#: strings Redis stores, so sums and comparisons stay exact far past 2^53 pico-dollars.
LUA_MONEY = """
local B = 1000000
local function parse(s)
  s = tostring(s or '0')
  if string.sub(s, 1, 1) == '-' then return {0, 0} end
  local n = #s
  if n <= 6 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, n - 6)), tonumber(string.sub(s, n - 5))}
end
local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= B then hi, lo = hi + 1, lo - B end
  return {hi, lo}
end
local function gt(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end
local function ge(a, b) return not gt(b, a) end
"""

#: KEYS: limits, hold expiry, hold amount, hold total, settled mark, day counters, month counters,
#: day soft/hard marks, month soft/hard marks, stream, request hash, job record.
#: ARGV: see CostLedger._charge.
_CHARGE = (
    LUA_MONEY
    + """
local res_id, has_entry = ARGV[1], ARGV[3] == '1'
if res_id ~= '' and redis.call('EXISTS', KEYS[5]) == 1 then return {0, ''} end
local repeat_entry = has_entry and redis.call('HEXISTS', KEYS[13], ARGV[4]) == 1
if res_id ~= '' then
  redis.call('SET', KEYS[5], '1', 'PX', ARGV[2])
  local held = redis.call('HGET', KEYS[3], res_id)
  if held then
    redis.call('DECRBY', KEYS[4], held)
    redis.call('HDEL', KEYS[3], res_id)
    redis.call('ZREM', KEYS[2], res_id)
  end
end
if repeat_entry then return {0, ''} end  -- already charged; the hold (if any) is freed above
local i = 18
for _ = 1, tonumber(ARGV[13]) do
  redis.call('HINCRBY', KEYS[6], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[7], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('EXPIRE', KEYS[6], ARGV[10])
local entry_id = ''
if has_entry then
  for _ = 1, tonumber(ARGV[14]) do redis.call('HINCRBY', KEYS[13], ARGV[i], ARGV[i + 1]); i = i + 2 end
  local labels = {ARGV[4], ARGV[5]}  -- the attempt's entry, then the request's labels: one HSET
  for _ = 1, tonumber(ARGV[15]) do
    labels[#labels + 1] = ARGV[i]; labels[#labels + 1] = ARGV[i + 1]; i = i + 2
  end
  local fields = {}
  for _ = 1, tonumber(ARGV[16]) do
    fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1]; i = i + 2
  end
  entry_id = redis.call('XADD', KEYS[12], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
  redis.call('HSET', KEYS[13], unpack(labels))
  redis.call('EXPIRE', KEYS[13], ARGV[7])
  if ARGV[8] ~= '' and redis.call('EXISTS', KEYS[14]) == 1 then  -- never create a job record
    redis.call('HINCRBY', KEYS[14], 'cost_pico_usd', ARGV[9])  -- (its TTL was set at creation)
  end
end
local out = {1, entry_id}
if ARGV[17] ~= '1' then return out end
-- One HMGET for every limit; a period's spend is read (as Redis' exact decimal) only if it has one.
local limits = redis.call('HMGET', KEYS[1], 'day:soft', 'day:hard', 'month:soft', 'month:hard')
local checks = {{'day', KEYS[6], KEYS[8], KEYS[9], ARGV[11], limits[1], limits[2]},
                {'month', KEYS[7], KEYS[10], KEYS[11], ARGV[12], limits[3], limits[4]}}
for _, c in ipairs(checks) do
  if c[6] or c[7] then
    local spent = redis.call('HGET', c[2], 'cost_pico') or '0'
    for n, level in ipairs({'soft', 'hard'}) do
      local limit = c[5 + n]
      if limit and ge(parse(spent), parse(limit)) and redis.call('SET', c[2 + n], '1', 'NX', 'PX', c[5]) then
        out[#out + 1] = c[1]; out[#out + 1] = level; out[#out + 1] = limit; out[#out + 1] = spent
      end
    end
  end
end
return out
"""
)


@dataclass(frozen=True)
class BudgetAlert:
    """A budget limit reached, reported once per tenant, period and level.

    The caller turns it into a metric, a log line and a signed webhook event (:meth:`to_event`).
    """

    tenant: str
    period: Period
    period_id: str
    level: Literal["soft", "hard"]
    limit_pico: int
    spent_pico: int
    at_ms: int

    @property
    def event_type(self) -> str:
        return f"budget.{self.level}_limit_reached"

    def to_event(self) -> dict[str, Any]:
        """The webhook payload: exact integers and exact dollar strings, never floats."""
        return {
            "type": self.event_type,
            "tenant": self.tenant,
            "period": self.period.value,
            "period_id": self.period_id,
            "limit_pico_usd": self.limit_pico,
            "spent_pico_usd": self.spent_pico,
            "limit_usd": format_usd(self.limit_pico),
            "spent_usd": format_usd(self.spent_pico),
            "timestamp_ms": self.at_ms,
        }


@dataclass(frozen=True)
class CostEntry:
    """One upstream attempt's cost. Build it with :meth:`priced` so cost and version agree."""

    request_id: str
    tenant: str
    provider: str
    model: str
    usage: Usage
    cost_pico: int
    job_id: str | None = None
    #: The routing target that served it (alias, canary arm), as the proxy names it.
    target: str | None = None
    attempt: int = 1
    price_version: str | None = None
    cache_hit: bool = False
    saved_pico: int = 0
    ts_ms: int = field(default_factory=now_ms)
    #: The stream id, when read back from the ledger.
    entry_id: str | None = None

    @classmethod
    def priced(
        cls,
        price: Price,
        usage: Usage,
        *,
        request_id: str,
        tenant: str,
        job_id: str | None = None,
        target: str | None = None,
        attempt: int = 1,
        cache_hit: bool = False,
        saved_pico: int = 0,
        ts_ms: int | None = None,
    ) -> CostEntry:
        return cls(
            request_id=request_id,
            tenant=tenant,
            provider=price.provider,
            model=price.model,
            usage=usage,
            cost_pico=price.cost(usage),
            job_id=job_id,
            target=target,
            attempt=attempt,
            price_version=price.version,
            cache_hit=cache_hit,
            saved_pico=saved_pico,
            ts_ms=now_ms() if ts_ms is None else ts_ms,
        )

    @property
    def estimated(self) -> bool:
        return self.usage.estimated

    @property
    def cost_usd(self) -> Decimal:
        return to_dollars(self.cost_pico)

    def fields(self) -> dict[str, str]:
        u = self.usage
        return {
            "request_id": self.request_id,
            "tenant": self.tenant,
            "job_id": self.job_id or "",
            "provider": self.provider,
            "model": self.model,
            "target": self.target or "",
            "attempt": str(self.attempt),
            "input_tokens": str(u.input_tokens),
            "output_tokens": str(u.output_tokens),
            "cached_input_tokens": str(u.cached_input_tokens),
            "cache_write_tokens": str(u.cache_write_tokens),
            "estimated": "1" if u.estimated else "0",
            "cost_pico": str(self.cost_pico),
            "price_version": self.price_version or "",
            "cache_hit": "1" if self.cache_hit else "0",
            "saved_pico": str(self.saved_pico),
            "ts_ms": str(self.ts_ms),
        }

    @classmethod
    def from_fields(cls, f: Mapping[str, str], entry_id: str | None = None) -> CostEntry:
        return cls(
            request_id=f["request_id"],
            tenant=f["tenant"],
            provider=f["provider"],
            model=f["model"],
            usage=Usage(
                input_tokens=int(f["input_tokens"]),
                output_tokens=int(f["output_tokens"]),
                cached_input_tokens=int(f["cached_input_tokens"]),
                cache_write_tokens=int(f["cache_write_tokens"]),
                estimated=f["estimated"] == "1",
            ),
            cost_pico=int(f["cost_pico"]),
            job_id=f["job_id"] or None,
            target=f["target"] or None,
            attempt=int(f["attempt"]),
            price_version=f["price_version"] or None,
            cache_hit=f["cache_hit"] == "1",
            saved_pico=int(f["saved_pico"]),
            ts_ms=int(f["ts_ms"]),
            entry_id=entry_id,
        )


_TOTAL_FIELDS = (
    "cost_pico",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "requests",
    "estimated_requests",
    "estimated_cost_pico",
    "cache_hits",
    "saved_pico",
    "unledgered_pico",
)


@dataclass(frozen=True)
class Totals:
    """A tenant's exact sums for one UTC day or month.

    ``unledgered_pico`` is spend settled as a bare amount (no entry); ``by_model`` maps
    ``provider/model`` to its cost.
    """

    tenant: str
    period: Period
    period_id: str
    cost_pico: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    estimated_requests: int = 0
    estimated_cost_pico: int = 0
    cache_hits: int = 0
    saved_pico: int = 0
    unledgered_pico: int = 0
    by_model: dict[str, int] = field(default_factory=dict)

    @property
    def cost_usd(self) -> Decimal:
        return to_dollars(self.cost_pico)


@dataclass(frozen=True)
class RequestCost:
    """Everything one request cost, over all its attempts."""

    request_id: str
    tenant: str
    job_id: str | None
    cost_pico: int
    usage: Usage
    attempts: int
    entries: list[CostEntry]

    @property
    def cost_usd(self) -> Decimal:
        return to_dollars(self.cost_pico)


@dataclass(frozen=True)
class Charge:
    """What a record or settle did: ``applied`` is False for a repeat (nothing changed)."""

    applied: bool
    entry_id: str | None
    alerts: tuple[BudgetAlert, ...] = ()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CostLedger:
    """Records and queries cost entries and per-tenant, per-job and per-request totals."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        jobs: JobStore | None = None,
        stream_maxlen: int = 100_000,
        request_ttl_s: int = 30 * 86400,
    ) -> None:
        self.client = client
        self.keys = CostKeys(namespace)
        self.jobs = jobs
        self.stream_maxlen = stream_maxlen
        self.request_ttl_s = request_ttl_s
        self._charge_script = client.register_script(_CHARGE)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> CostLedger:
        from shared.jobs import JobStore

        return cls(
            client,
            settings.namespace,
            jobs=JobStore(client, settings.namespace, settings.job_ttl_s),
            stream_maxlen=settings.cost_ledger_maxlen,
            request_ttl_s=settings.cost_request_ttl_s,
        )

    # -- writing -------------------------------------------------------------------------------------

    def record(self, entry: CostEntry, *, reservation_id: str | None = None) -> Charge:
        """Append ``entry`` and add it to every total, in one atomic round trip.

        With ``reservation_id`` the same script frees that budget hold (see BudgetGuard.settle).
        """
        check_tenant(entry.tenant)
        if not _REQUEST_ID.fullmatch(entry.request_id):
            raise ValueError(f"bad request id {entry.request_id!r}")
        if entry.cost_pico < 0 or entry.saved_pico < 0 or entry.attempt < 1:
            raise ValueError("cost, saved and attempt must be non-negative (attempt >= 1)")
        if entry.job_id is not None and self.jobs is None:
            raise ValueError("an entry with a job id needs a CostLedger built with a JobStore")
        u = entry.usage
        model = f"{entry.provider}/{entry.model}"
        totals = {
            "cost_pico": entry.cost_pico,
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cached_input_tokens": u.cached_input_tokens,
            "cache_write_tokens": u.cache_write_tokens,
            "requests": 1,
            "estimated_requests": int(u.estimated),
            "estimated_cost_pico": entry.cost_pico if u.estimated else 0,
            "cache_hits": int(entry.cache_hit),
            "saved_pico": entry.saved_pico,
            f"model:{model}": entry.cost_pico,
        }
        # A zero adds nothing: fewer commands per charge (missing counters read as 0). A request's
        # own totals are summed from its entries when read, so a charge adds no counters there.
        totals = {k: v for k, v in totals.items() if v or k in ("cost_pico", "requests")}
        per_request: dict[str, int] = {}
        labels = {"tenant": entry.tenant, "job_id": entry.job_id or ""}
        fields = entry.fields()
        return self._charge(
            entry.tenant,
            entry.cost_pico,
            ts_ms=entry.ts_ms,
            reservation_id=reservation_id,
            totals=totals,
            entry=(entry.request_id, entry.attempt, fields, per_request, labels, entry.job_id),
        )

    def charge(self, tenant: str, amount_pico: int, *, reservation_id: str | None = None) -> Charge:
        """Add a bare amount to the tenant's spend (no entry); counted as ``unledgered_pico``."""
        check_tenant(tenant)
        if amount_pico < 0:
            raise ValueError("amount must be non-negative")
        totals = {"cost_pico": amount_pico, "unledgered_pico": amount_pico}
        return self._charge(tenant, amount_pico, ts_ms=now_ms(), reservation_id=reservation_id, totals=totals)

    def _charge(
        self,
        tenant: str,
        amount_pico: int,
        *,
        ts_ms: int,
        reservation_id: str | None,
        totals: Mapping[str, int],
        entry: tuple[str, int, dict[str, str], dict[str, int], dict[str, str], str | None] | None = None,
    ) -> Charge:
        k = self.keys
        day, month = period_id(Period.DAY, ts_ms), period_id(Period.MONTH, ts_ms)
        expiry, amounts, total = k.holds(tenant)
        request_key, job_key, job_ttl, job_cost, attempt_field, entry_json = "-", "-", "", "0", "", ""
        pairs: list[str | int] = [p for item in totals.items() for p in item]
        counts = [len(totals), 0, 0, 0]
        if entry is not None:
            request_id, attempt, fields, per_request, labels, job_id = entry
            request_key = k.request(request_id)
            attempt_field, entry_json = f"e:{attempt}", json.dumps(fields, separators=(",", ":"))
            if job_id is not None and self.jobs is not None:
                job_key, job_ttl, job_cost = self.jobs.key(job_id), str(self.jobs.ttl_s), str(amount_pico)
            for group in (per_request, labels, fields):
                pairs += [p for item in group.items() for p in item]
            counts[1:] = [len(per_request), len(labels), len(fields)]
        keys = [
            k.limits(tenant),
            expiry,
            amounts,
            total,
            k.settled(reservation_id) if reservation_id else "-",
            k.counters(tenant, Period.DAY, day),
            k.counters(tenant, Period.MONTH, month),
            k.alert_mark(tenant, day, "soft"),
            k.alert_mark(tenant, day, "hard"),
            k.alert_mark(tenant, month, "soft"),
            k.alert_mark(tenant, month, "hard"),
            k.stream(tenant),
            request_key,
            job_key,
        ]
        args: list[str | int] = [
            reservation_id or "",
            SETTLED_MARK_TTL_MS,
            "1" if entry is not None else "0",
            attempt_field,
            entry_json,
            self.stream_maxlen,
            self.request_ttl_s,
            job_ttl,
            job_cost,
            DAY_COUNTER_TTL_S,
            _DAY_MARK_TTL_MS,
            _MONTH_MARK_TTL_MS,
            *counts,
            "1" if amount_pico > 0 else "0",
            *pairs,
        ]
        reply = cast(list[Any], self._charge_script(keys=keys, args=args))
        if not int(reply[0]):
            return Charge(applied=False, entry_id=None)
        at = now_ms()
        alerts = tuple(
            BudgetAlert(
                tenant=tenant,
                period=Period(_text(reply[i])),
                period_id=day if _text(reply[i]) == "day" else month,
                level=cast(Literal["soft", "hard"], _text(reply[i + 1])),
                limit_pico=int(_text(reply[i + 2])),
                spent_pico=int(_text(reply[i + 3])),
                at_ms=at,
            )
            for i in range(2, len(reply), 4)
        )
        return Charge(applied=True, entry_id=_text(reply[1]) or None, alerts=alerts)

    # -- reading -------------------------------------------------------------------------------------

    def entries(
        self,
        tenant: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        count: int = 100,
    ) -> list[CostEntry]:
        """Entries oldest first: from ``since`` (inclusive) to ``until`` (exclusive), at most
        ``count``; with neither bound, the latest ``count``.  Bounds are the recording time."""
        key = self.keys.stream(check_tenant(tenant))
        if since is None and until is None:
            rows: Sequence[Any] = list(
                reversed(cast(Sequence[Any], self.client.xrevrange(key, "+", "-", count=count)))
            )
        else:
            low = f"{_ms(since)}-0" if since is not None else "-"
            high = f"({_ms(until)}-0" if until is not None else "+"
            rows = cast(Sequence[Any], self.client.xrange(key, low, high, count=count))
        return [
            CostEntry.from_fields({_text(a): _text(b) for a, b in data.items()}, _text(entry_id))
            for entry_id, data in rows
        ]

    def totals(self, tenant: str, period: Period, at: datetime | date | int | None = None) -> Totals:
        pid = period_id(period, at)
        raw = cast(dict[Any, Any], self.client.hgetall(self.keys.counters(check_tenant(tenant), period, pid)))
        values = {_text(a): int(_text(b)) for a, b in raw.items()}
        by_model = {name[6:]: v for name, v in values.items() if name.startswith("model:")}
        known = {name: values.get(name, 0) for name in _TOTAL_FIELDS}
        return Totals(tenant=tenant, period=period, period_id=pid, by_model=by_model, **known)

    def request(self, request_id: str) -> RequestCost | None:
        raw = cast(dict[Any, Any], self.client.hgetall(self.keys.request(request_id)))
        if not raw:
            return None
        f = {_text(a): _text(b) for a, b in raw.items()}
        entries = sorted(
            (CostEntry.from_fields(json.loads(v)) for name, v in f.items() if name.startswith("e:")),
            key=lambda e: e.attempt,
        )
        return RequestCost(
            request_id=request_id,
            tenant=f.get("tenant", ""),
            job_id=f.get("job_id") or None,
            cost_pico=sum(e.cost_pico for e in entries),
            usage=Usage(
                input_tokens=sum(e.usage.input_tokens for e in entries),
                output_tokens=sum(e.usage.output_tokens for e in entries),
                cached_input_tokens=sum(e.usage.cached_input_tokens for e in entries),
                cache_write_tokens=sum(e.usage.cache_write_tokens for e in entries),
                estimated=any(e.usage.estimated for e in entries),
            ),
            attempts=len(entries),
            entries=entries,
        )


def _ms(at: datetime) -> int:
    return int((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp() * 1000)
