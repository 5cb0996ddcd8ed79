"""Cost accounting and budget guards against a real Redis: exact pico-dollar sums, no overshoot."""

from __future__ import annotations

import json
import math
import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from shared.config import Settings
from shared.cost import (
    BudgetAlert,
    BudgetExceeded,
    BudgetGuard,
    CostEntry,
    CostLedger,
    Period,
    PriceTable,
    PriceTableError,
    UnknownModel,
    Usage,
    estimate_usage,
    format_usd,
    parse_usd,
    worst_case_cost,
)
from shared.cost import cli as cost_cli
from shared.cost.estimate import MESSAGE_OVERHEAD_TOKENS, REPLY_PRIMING_TOKENS
from shared.jobs import JobStore

NS = "pltest"
TABLE = PriceTable.load()


def _ledger(url: str, **kwargs: Any) -> CostLedger:
    client = redis.Redis.from_url(url)
    return CostLedger(client, NS, jobs=JobStore(client, NS, 3600), **kwargs)


def _guard(url: str, **kwargs: Any) -> BudgetGuard:
    client = redis.Redis.from_url(url)
    return BudgetGuard(client, NS, ledger=CostLedger(client, NS, jobs=JobStore(client, NS, 3600)), **kwargs)


# -- prices and usage ---------------------------------------------------------------------------------


def test_openai_usage_with_cached_tokens_costs_exactly() -> None:
    # The shape from LiteLLM issue 36168: 16111 prompt tokens of which 15872 cached.
    usage = Usage.from_openai(
        {"prompt_tokens": 16111, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 15872}}
    )
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (239, 15872, 50)
    price = TABLE.price("openai", "gpt-4o-mini-2024-07-18")
    assert (price.input, price.cached_input, price.output) == (150_000, 75_000, 600_000)
    assert price.cost(usage) == 239 * 150_000 + 15872 * 75_000 + 50 * 600_000 == 1_256_250_000
    assert format_usd(price.cost(usage)) == "0.00125625"
    assert usage.to_openai()["prompt_tokens"] == 16111


def test_groq_usage_without_details_and_llama_prices() -> None:
    usage = Usage.from_openai({"prompt_tokens": 12, "completion_tokens": 50, "total_tokens": 62})
    price = TABLE.price("groq", "llama-3.1-8b-instant")
    assert usage == Usage(input_tokens=12, output_tokens=50)
    assert price.cost(usage) == 12 * 50_000 + 50 * 80_000


def test_anthropic_usage_cache_reads_and_writes_are_separate() -> None:
    raw = {
        "input_tokens": 20,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 300,
        "output_tokens": 7,
    }
    usage = Usage.from_anthropic(raw)
    assert usage.total_input_tokens == 1320
    price = TABLE.price("anthropic", "claude-sonnet-4-20250514")
    assert (price.input, price.cached_input, price.cache_write, price.output) == (
        3_000_000,
        300_000,
        3_750_000,
        15_000_000,
    )
    assert price.cost(usage) == 20 * 3_000_000 + 1000 * 300_000 + 300 * 3_750_000 + 7 * 15_000_000
    assert usage.to_anthropic() == raw
    # A streamed message: message_start's usage, then message_delta's cumulative output count.
    merged = Usage.from_anthropic({**{"input_tokens": 20, "output_tokens": 1}, **{"output_tokens": 7}})
    assert merged.output_tokens == 7


def test_usage_validation() -> None:
    with pytest.raises(ValueError):
        Usage.from_openai({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 6}})
    with pytest.raises(ValueError):
        Usage(input_tokens=-1)
    with pytest.raises(ValueError):
        Usage.from_openai({"prompt_tokens": 1.5})


def test_versioned_price_lookup_by_date() -> None:
    launch = TABLE.price("openai", "gpt-4o", at=datetime(2024, 6, 1, tzinfo=UTC))
    later = TABLE.price("openai", "gpt-4o", at=datetime(2025, 1, 1))
    assert (launch.input, launch.cached_input, launch.version) == (5_000_000, 5_000_000, "2024-05-13")
    assert (later.input, later.cached_input, later.version) == (2_500_000, 1_250_000, "2024-10-02")
    # The day a version starts (UTC) it is in force.
    assert TABLE.price("openai", "gpt-4o", at=datetime(2024, 10, 2, 0, 0, tzinfo=UTC)).version == "2024-10-02"
    with pytest.raises(UnknownModel):
        TABLE.price("openai", "gpt-4o", at=datetime(2024, 1, 1, tzinfo=UTC))


def test_unknown_model_and_bad_prices_are_refused() -> None:
    with pytest.raises(UnknownModel):
        TABLE.price("openai", "gpt-9")
    with pytest.raises(UnknownModel):
        TABLE.price("mistral", "gpt-4o")
    row = {"effective_from": "2025-01-01", "output": "1"}
    for bad in ("0.0000001", "-1", "x"):
        with pytest.raises(PriceTableError):
            PriceTable.from_dict({"models": {"p": {"m": [{**row, "input": bad}]}}})
    with pytest.raises(PriceTableError):
        PriceTable.from_dict({"models": {"p": {"m": [{**row, "input": 0.15}]}}})
    ok = PriceTable.from_dict({"models": {"p": {"m": [{**row, "input": "0.0375"}]}}})
    assert ok.price("p", "m").input == 37_500


def test_every_packaged_price_is_present() -> None:
    expected = {
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4.1-mini"),
        ("anthropic", "claude-3-5-haiku"),
        ("anthropic", "claude-sonnet-4"),
        ("groq", "llama-3.1-8b-instant"),
        ("groq", "llama-3.3-70b-versatile"),
    }
    assert set(TABLE.models()) == expected


def test_dollars_are_exact() -> None:
    assert parse_usd("5.00") == 5 * 10**12
    assert parse_usd("$0.000000000001") == 1
    assert format_usd(37_500) == "0.0000000375"
    assert format_usd(0) == "0"
    with pytest.raises(ValueError):
        parse_usd("0.0000000000001")


# -- estimates ----------------------------------------------------------------------------------------


def test_estimate_marks_estimated_and_uses_the_documented_rule() -> None:
    prompt, completion = "hello world, " * 10, "héllo 世界"
    usage = estimate_usage(prompt, completion, message_count=2)
    assert usage.estimated
    assert usage.input_tokens == math.ceil(130 / 4) + 2 * MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS
    assert usage.output_tokens == math.ceil(len(completion.encode()) / 4) == 4
    assert usage.cached_input_tokens == 0
    assert estimate_usage("x", "").output_tokens == 0


def test_estimate_uses_an_offline_tokenizer_when_installed() -> None:
    import bpe_openai  # noqa: F401  (a dependency: the offline tokenizer must be there)

    usage = estimate_usage("hello world, this is a test", "ok", model="gpt-4o-mini-2024-07-18")
    assert usage.estimated
    assert usage.input_tokens == 7 + MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS


def test_worst_case_bounds_the_real_cost() -> None:
    price = TABLE.price("openai", "gpt-4o-mini")
    prompt = "Summarise: " + "the quick brown fox jumps over the lazy dog. " * 40
    bound = worst_case_cost(price, prompt, 100)
    actual = price.cost(Usage(input_tokens=estimate_usage(prompt, "").input_tokens, output_tokens=100))
    assert bound >= actual
    assert worst_case_cost(price, "", None, default_max_tokens=10) == (
        (MESSAGE_OVERHEAD_TOKENS + REPLY_PRIMING_TOKENS) * 150_000 + 10 * 600_000
    )


# -- ledger -------------------------------------------------------------------------------------------


def _entry(request_id: str, usage: Usage, **kwargs: Any) -> CostEntry:
    price = TABLE.price(kwargs.pop("provider", "openai"), kwargs.pop("model", "gpt-4o-mini"))
    return CostEntry.priced(
        price, usage, request_id=request_id, tenant=kwargs.pop("tenant", "acme"), **kwargs
    )


def test_a_charge_never_creates_a_job_record(redis_url: str) -> None:
    ledger = _ledger(redis_url)
    charge = ledger.record(_entry("req-ghost", Usage(input_tokens=10, output_tokens=2), job_id="ghost"))
    assert charge.applied  # the tenant is billed...
    assert not ledger.client.exists(f"{NS}.job.ghost")  # ...but no job hash appears for a made-up id


def test_ledger_records_exact_aggregates_and_answers_queries(redis_url: str) -> None:
    ledger = _ledger(redis_url)
    JobStore(ledger.client, NS, 3600).create("job1", tenant="acme", kind="x")
    t0 = int(datetime(2025, 6, 30, 23, 59, tzinfo=UTC).timestamp() * 1000)
    first = _entry("req-1", Usage(input_tokens=239, cached_input_tokens=15872, output_tokens=50), ts_ms=t0)
    cut = _entry(
        "req-1", estimate_usage("p" * 40, "c" * 8), attempt=2, job_id="job1", target="canary", ts_ms=t0
    )
    claude = _entry(
        "req-2",
        Usage.from_anthropic({"input_tokens": 10, "output_tokens": 3, "cache_creation_input_tokens": 4}),
        provider="anthropic",
        model="claude-3-5-haiku",
        job_id="job1",
        ts_ms=t0 + 120_000,  # the next day and month (UTC)
    )
    for entry in (first, cut, claude):
        charge = ledger.record(entry)
        assert charge.applied and charge.entry_id and charge.alerts == ()
    assert not ledger.record(cut).applied  # a retried record bills nothing twice

    june = ledger.totals("acme", Period.MONTH, datetime(2025, 6, 1))
    assert june.cost_pico == first.cost_pico + cut.cost_pico == 1_256_250_000 + cut.cost_pico
    assert (june.requests, june.estimated_requests, june.estimated_cost_pico) == (2, 1, cut.cost_pico)
    assert june.cached_input_tokens == 15872
    assert june.by_model == {"openai/gpt-4o-mini": june.cost_pico}
    july_day = ledger.totals("acme", Period.DAY, datetime(2025, 7, 1))
    assert july_day.cost_pico == claude.cost_pico == 10 * 800_000 + 4 * 1_000_000 + 3 * 4_000_000
    assert july_day.cache_write_tokens == 4
    assert ledger.totals("other", Period.MONTH, datetime(2025, 6, 1)).cost_pico == 0

    request = ledger.request("req-1")
    assert request is not None
    assert request.cost_pico == first.cost_pico + cut.cost_pico
    assert request.attempts == 2 and request.usage.estimated
    assert [e.attempt for e in request.entries] == [1, 2]
    assert request.entries[1] == cut
    assert ledger.request("nope") is None

    record = JobStore(ledger.client, NS, 3600).get("job1")
    assert record is not None and record.cost_pico_usd == cut.cost_pico + claude.cost_pico

    latest = ledger.entries("acme", count=2)
    assert [(e.request_id, e.attempt) for e in latest] == [("req-1", 2), ("req-2", 1)]
    assert latest[0].estimated and latest[0].target == "canary" and latest[0].price_version == "2024-10-01"
    everything = ledger.entries("acme", since=datetime.now(UTC) - timedelta(minutes=1))
    assert [e.cost_pico for e in everything] == [first.cost_pico, cut.cost_pico, claude.cost_pico]
    assert ledger.entries("acme", until=datetime.now(UTC) - timedelta(minutes=1)) == []


def test_ledger_stream_is_bounded(redis_url: str) -> None:
    ledger = _ledger(redis_url, stream_maxlen=10)
    for i in range(250):
        ledger.record(_entry(f"r{i}", Usage(input_tokens=1)))
    assert ledger.client.xlen(ledger.keys.stream("acme")) < 250  # MAXLEN ~ trims whole nodes
    assert ledger.totals("acme", Period.DAY).requests == 250  # the counters stay exact


def test_ledger_rejects_bad_input(redis_url: str) -> None:
    ledger = _ledger(redis_url)
    with pytest.raises(ValueError):
        ledger.record(_entry("r1", Usage(), tenant="a.b"))
    with pytest.raises(ValueError):
        ledger.record(_entry("bad id", Usage()))


# -- budgets ------------------------------------------------------------------------------------------


def test_over_hard_limit_is_refused_before_anything_is_recorded(redis_url: str) -> None:
    guard = _guard(redis_url)
    guard.set_budget("acme", Period.MONTH, hard_pico=parse_usd("5.00"), soft_pico=parse_usd("4.00"))
    guard.set_budget("acme", Period.DAY, hard_pico=parse_usd("1.00"))
    guard.ledger.charge("acme", parse_usd("0.90"))
    with pytest.raises(BudgetExceeded) as refused:
        guard.reserve("acme", parse_usd("0.20"))
    error = refused.value
    assert (error.period, error.limit_pico, error.spent_pico, error.held_pico) == (
        Period.DAY,
        10**12,
        9 * 10**11,
        0,
    )
    assert error.detail()["limit_usd"] == "1" and "day budget" in str(error)
    status = guard.status("acme")
    assert status.held_pico == 0 and status.spent[Period.DAY] == 9 * 10**11
    assert guard.ledger.entries("acme") == []
    assert guard.reserve("acme", parse_usd("0.10")).amount_pico == 10**11  # exactly up to the limit


def test_amounts_past_two_to_the_53_stay_exact(redis_url: str) -> None:
    guard = _guard(redis_url)
    hard = parse_usd("20000")  # 2 * 10^16 pico: doubles cannot count this to the pico
    guard.set_budget("acme", Period.MONTH, hard_pico=hard)
    guard.ledger.charge("acme", hard - 3)
    with pytest.raises(BudgetExceeded):
        guard.reserve("acme", 4)
    guard.reserve("acme", 2)
    guard.reserve("acme", 1)
    with pytest.raises(BudgetExceeded) as refused:
        guard.reserve("acme", 1)
    assert (refused.value.spent_pico, refused.value.held_pico) == (hard - 3, 3)


def _race_settings(guard: BudgetGuard, estimate: int, fits: int) -> int:
    hard = parse_usd("5.00")
    guard.set_budget("acme", Period.MONTH, hard_pico=hard)
    guard.ledger.charge("acme", hard - fits * estimate - estimate // 2)  # room for `fits`, not one more
    return hard


def _contend(url: str, estimate: int, actual: int, index: int, start: Any, reserved: Any, out: Any) -> None:
    """One request: reserve at the same moment as the others, then settle its real cost."""
    guard = _guard(url)
    start.wait(timeout=60)
    try:
        reservation = guard.reserve("acme", estimate)
    except BudgetExceeded:
        reservation = None
    reserved.wait(timeout=60)  # every reservation is decided before any settles
    if reservation is not None:
        entry = _entry(f"race-{index}", Usage(input_tokens=0, output_tokens=actual // 600_000))
        guard.settle(reservation, entry)
    out.put(reservation is not None)


ESTIMATE = 600_000 * 1000  # 1000 output tokens of gpt-4o-mini
ACTUALS = [600_000 * n for n in (1000, 999, 400)]


def test_twenty_concurrent_threads_never_pass_the_hard_limit(redis_url: str) -> None:
    guard = _guard(redis_url)
    hard = _race_settings(guard, ESTIMATE, fits=5)
    start, reserved = threading.Barrier(20), threading.Barrier(20)
    import queue

    out: queue.Queue[bool] = queue.Queue()
    threads = [
        threading.Thread(target=_contend, args=(redis_url, ESTIMATE, ACTUALS[i % 3], i, start, reserved, out))
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    admitted = sum(out.get_nowait() for _ in range(20))
    status = guard.status("acme")
    assert admitted == 5
    assert status.held_pico == 0
    assert status.spent[Period.MONTH] <= hard
    assert guard.ledger.totals("acme", Period.MONTH).requests == 5


def test_twenty_concurrent_processes_never_pass_the_hard_limit(redis_url: str) -> None:
    guard = _guard(redis_url)
    hard = _race_settings(guard, ESTIMATE, fits=7)
    ctx = multiprocessing.get_context("spawn")
    start, reserved, out = ctx.Barrier(20), ctx.Barrier(20), ctx.Queue()
    procs = [
        ctx.Process(target=_contend, args=(redis_url, ESTIMATE, ACTUALS[i % 3], i, start, reserved, out))
        for i in range(20)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in range(20)]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    status = guard.status("acme")
    assert sum(results) == 7
    assert status.held_pico == 0
    assert status.spent[Period.MONTH] <= hard
    assert guard.ledger.totals("acme", Period.MONTH).requests == 7


def test_soft_alert_fires_once_per_period_and_hard_alert_when_reached(redis_url: str) -> None:
    alerts: list[BudgetAlert] = []
    guard = _guard(redis_url, on_alert=alerts.append)
    guard.set_budget("acme", Period.MONTH, hard_pico=100, soft_pico=50)
    for _ in range(4):
        guard.settle(guard.reserve("acme", 20), 20)
    assert [(a.level, a.period, a.spent_pico, a.limit_pico) for a in alerts] == [
        ("soft", Period.MONTH, 60, 50)
    ]
    returned = guard.settle(guard.reserve("acme", 20), 20)
    assert [a.level for a in returned] == ["hard"] and len(alerts) == 2
    event = alerts[0].to_event()
    assert event["type"] == "budget.soft_limit_reached" and event["spent_pico_usd"] == 60
    json.dumps(event)
    with pytest.raises(BudgetExceeded):
        guard.reserve("acme", 1)
    assert guard.record(_entry("r-free", Usage())) == ()  # zero cost alerts nothing


def test_failing_alert_hook_does_not_undo_the_charge(redis_url: str) -> None:
    def boom(alert: BudgetAlert) -> None:
        raise RuntimeError("webhook down")

    guard = _guard(redis_url, on_alert=boom)
    guard.set_budget("acme", Period.DAY, soft_pico=1)
    assert len(guard.settle(guard.reserve("acme", 5), 5)) == 1
    assert guard.status("acme").spent[Period.DAY] == 5


def test_settle_release_and_expiry(redis_url: str) -> None:
    guard = _guard(redis_url, reservation_ttl_s=0.3)
    guard.set_budget("acme", Period.DAY, hard_pico=100)
    held = guard.reserve("acme", 100)
    with pytest.raises(BudgetExceeded):
        guard.reserve("acme", 1)
    time.sleep(0.4)  # the holder crashed: its hold expires and the budget comes back
    assert guard.status("acme").held_pico == 0
    again = guard.reserve("acme", 60)
    assert guard.release(again) and not guard.release(again)
    assert guard.status("acme").held_pico == 0
    # A late settle of an expired hold still charges what was really spent, once.
    guard.settle(held, 30)
    guard.settle(held, 30)
    assert guard.status("acme").spent[Period.DAY] == 30
    guard.set_budget("acme", Period.DAY, hard_pico=10**6)
    third = guard.reserve("acme", 10)
    entry = _entry("r-late", Usage(input_tokens=1))
    with pytest.raises(ValueError):
        guard.settle(third, _entry("r-x", Usage(), tenant="other"))
    guard.settle(third, entry)
    guard.settle(guard.reserve("acme", 10), entry)  # recorded already: frees the hold, bills nothing
    assert guard.status("acme").held_pico == 0
    assert guard.status("acme").spent[Period.DAY] == 30 + entry.cost_pico


def test_budget_validation(redis_url: str) -> None:
    guard = _guard(redis_url)
    with pytest.raises(ValueError):
        guard.set_budget("acme", Period.DAY, hard_pico=1, soft_pico=2)
    with pytest.raises(ValueError):
        guard.reserve("acme", -1)
    guard.set_budget("acme", Period.DAY, hard_pico=5)
    guard.set_budget("acme", Period.MONTH, soft_pico=7)
    assert guard.budgets("acme")[Period.DAY].hard_pico == 5
    guard.clear_budget("acme", Period.DAY)
    assert list(guard.budgets("acme")) == [Period.MONTH]


def test_cli_sets_and_shows_a_budget(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRAMATIQ_BROKER_URL", redis_url)
    monkeypatch.setenv("PRESSLINE_NAMESPACE", NS)
    assert (
        cost_cli.main(
            ["budget", "set", "--tenant", "acme", "--period", "month", "--hard", "5.00", "--soft", "4.00"]
        )
        == 0
    )
    capsys.readouterr()
    assert cost_cli.main(["budget", "show", "--tenant", "acme"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["periods"]["month"]["hard"] == {"usd": "5", "pico_usd": 5 * 10**12}
    assert shown["periods"]["month"]["soft"]["usd"] == "4"
    assert shown["periods"]["day"]["hard"] is None
    with pytest.raises(SystemExit):
        cost_cli.main(["budget", "set", "--tenant", "acme", "--period", "day", "--hard", "1", "--soft", "2"])


def test_settings_for_cost() -> None:
    settings = Settings.from_env(
        {"PRESSLINE_COST_LEDGER_MAXLEN": "7", "PRESSLINE_BUDGET_RESERVATION_TTL_S": "5"}
    )
    assert (settings.cost_ledger_maxlen, settings.budget_reservation_ttl_s) == (7, 5.0)
    assert Settings.from_env({}).price_table_path is None
