"""The pipeline's stage modules with fakes (no broker, no WordPress), and its run record in Redis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import redis
from dramatiq.message import Message

from shared.api.errors import ApiError
from shared.api.jobs import view
from shared.errors import PermanentError
from shared.jobs import JobState, JobStore, PostRecord, StageState
from shared.outbound import stable_msg_id
from shared.pipeline import events, infer, ingest, post_process, publish
from shared.pipeline.errors import MAX_DELAY_MS, RetryLater
from shared.pipeline.memo import StageMemo
from shared.sites import Site
from shared.streams import RedisStreamsBroker
from shared.wordpress import PermissionRefused, PostRef, SiteUnavailable, WordPressError

STAGES = ("ingest", "infer", "post_process", "publish")

# -- ingest ------------------------------------------------------------------------------------------


def test_ingest_normalises_whitespace_controls_and_paragraphs() -> None:
    doc = ingest.normalise(
        {
            "title": "  Hello\t\n  world\x00 ",
            "source": "One  two.\r\n\r\n\r\n  Three\x07 four.  \nfive",
            "hints": "  short,   friendly ",
            "ignored": 1,
        }
    )
    assert doc == {
        "title": "Hello world",
        "source": "One two.\n\nThree four. five",
        "hints": "short, friendly",
    }
    assert "hints" not in ingest.normalise({"title": "t", "source": "s", "hints": None})


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([], "JSON object"),
        ({"source": "s"}, "'title' must be a string"),
        ({"title": " \n\t", "source": "s"}, "'title' must not be empty"),
        ({"title": "t", "source": "x" * 20_001}, "longer than 20000"),
        ({"title": "t", "source": "s", "hints": 5}, "'hints' must be a string"),
    ],
)
def test_ingest_refuses_bad_input_for_good(document: Any, reason: str) -> None:
    with pytest.raises(PermanentError, match=reason):
        ingest.normalise(document)


# -- infer -------------------------------------------------------------------------------------------


@dataclass
class FakeProxy:
    reply: dict[str, Any] | None = None
    error: ApiError | None = None

    def __post_init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def complete(self, **call: Any) -> dict[str, Any]:
        self.calls.append(call)
        if self.error:
            raise self.error
        assert self.reply is not None
        return self.reply


def openai_reply(text: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 12},
    }


DOC = {"title": "Tides", "source": "The moon pulls the sea.", "hints": "for children"}


def test_infer_asks_the_proxy_for_the_job_and_returns_the_draft() -> None:
    proxy = FakeProxy(openai_reply("# Tides\n\nThe sea rises."))
    out = infer.infer(proxy, DOC, tenant="acme", job_id="j1", model="fast", max_tokens=900)
    assert out == {
        "title": "Tides",
        "draft": "# Tides\n\nThe sea rises.",
        "model": "gpt-4o-mini",
        "usage": {"input_tokens": 40, "output_tokens": 12},
        "truncated": False,
    }
    (call,) = proxy.calls
    assert (call["tenant"], call["job_id"], call["route_key"], call["wire"]) == ("acme", "j1", "j1", "openai")
    body = call["body"]
    assert body["model"] == "fast" and body["max_tokens"] == 900
    system, user = body["messages"]
    assert system == {"role": "system", "content": infer.SYSTEM_PROMPT}
    assert "Tides" in user["content"] and "The moon pulls the sea." in user["content"]
    assert "for children" in user["content"]


def test_infer_marks_a_truncated_answer_and_refuses_an_empty_one() -> None:
    out = infer.infer(
        FakeProxy(openai_reply("words", "length")), DOC, tenant="a", job_id="j", model="m", max_tokens=1
    )
    assert out["truncated"] is True
    with pytest.raises(PermanentError, match="without any text"):
        infer.infer(FakeProxy(openai_reply("  ")), DOC, tenant="a", job_id="j", model="m", max_tokens=1)


def test_infer_budget_refusal_is_permanent_and_upstream_trouble_is_retried() -> None:
    def run(error: ApiError) -> None:
        infer.infer(FakeProxy(error=error), DOC, tenant="a", job_id="j", model="m", max_tokens=1)

    with pytest.raises(PermanentError, match="budget"):
        run(ApiError(402, "budget_exceeded", "the month's hard budget is spent"))
    with pytest.raises(PermanentError, match="404 model_not_found"):
        run(ApiError(404, "model_not_found", "unknown alias"))
    with pytest.raises(RetryLater) as unavailable:
        run(ApiError(503, "upstream_unavailable", "openai is failing"))
    assert unavailable.value.delay is None  # Dramatiq's own backoff with jitter
    with pytest.raises(RetryLater) as limited:
        run(ApiError(429, "upstream_rate_limited", "slow down", headers={"Retry-After": "7"}))
    assert limited.value.delay == 7000
    with pytest.raises(RetryLater):
        run(ApiError(504, "upstream_timeout", "no first token"))


def test_a_retry_hint_is_capped() -> None:
    assert RetryLater("x", delay_s=10**6).delay == MAX_DELAY_MS
    assert RetryLater("x", delay_s=0).delay == 1


# -- post-process ------------------------------------------------------------------------------------


def test_post_process_renders_markdown_takes_the_title_and_sanitises() -> None:
    draft = (
        "# The <em>Tides</em>\n\nThe moon **pulls** the sea. <script>steal()</script>"
        ' <a href="javascript:alert(1)" onclick="x()">bad</a> [good](https://example.org)\n\n'
        '- one\n- two\n\n<iframe src="https://evil"></iframe><img src=x onerror=alert(1)>'
    )
    article = post_process.render(draft, fallback_title="Fallback", min_words=5)
    assert article["title"] == "The Tides"
    body = article["html"]
    assert "<strong>pulls</strong>" in body and "<li>one</li>" in body
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">good</a>' in body
    for forbidden in ("<script", "steal", "javascript:", "onclick", "<iframe", "<img", "onerror", "<h1"):
        assert forbidden not in body, forbidden
    assert article["words"] >= 5


def test_post_process_falls_back_to_the_input_title_and_wraps_plain_text() -> None:
    article = post_process.render("lorem ipsum dolor sit amet", fallback_title=" My  title ", min_words=5)
    assert article == {"title": "My title", "html": "<p>lorem ipsum dolor sit amet</p>", "words": 5}


def test_post_process_refuses_short_empty_and_oversized_articles() -> None:
    with pytest.raises(PermanentError, match="at least 5"):
        post_process.render("# Title\n\ntoo short", fallback_title="t", min_words=5)
    with pytest.raises(PermanentError, match="empty"):
        post_process.render("   ", fallback_title="t", min_words=1)
    with pytest.raises(PermanentError, match="longer than"):
        post_process.render("word " * 50_000, fallback_title="t", min_words=1)
    with pytest.raises(PermanentError, match="no title"):
        post_process.render("<script>x</script> body words here", fallback_title="  ", min_words=1)


# -- the run record ----------------------------------------------------------------------------------


@pytest.fixture
def jobs(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), "t", 3600)


def test_the_run_record_lists_every_stage_with_its_state_timing_and_attempts(jobs: JobStore) -> None:
    assert jobs.create("j1", tenant="acme", kind="wordpress_post", stages=STAGES, site="blog")
    record = jobs.get("j1")
    assert record is not None and record.site == "blog"
    assert [(s.name, s.state) for s in record.stages] == [(n, StageState.QUEUED) for n in STAGES]
    jobs.running("j1", stage="ingest", attempt=1, trace_id="ab" * 16)
    jobs.stage_succeeded("j1", stage="ingest", run_ms=12)
    jobs.running("j1", stage="infer", attempt=1, trace_id="cd" * 16)  # the first trace id stays
    jobs.retrying("j1", error="RetryLater: busy", stage="infer", run_ms=5)
    jobs.running("j1", stage="infer", attempt=2)
    jobs.stage_succeeded("j1", stage="infer", run_ms=7)
    record = jobs.get("j1")
    assert record is not None
    assert record.state is JobState.RUNNING and record.trace_id == "ab" * 16 and record.attempts == 3
    ingest_rec, infer_rec, post_rec, _ = record.stages
    assert (ingest_rec.state, ingest_rec.attempts, ingest_rec.run_ms) == (StageState.SUCCEEDED, 1, 12)
    assert (infer_rec.state, infer_rec.attempts, infer_rec.run_ms) == (StageState.SUCCEEDED, 2, 12)
    assert infer_rec.last_error == "RetryLater: busy"
    assert infer_rec.started_at_ms and infer_rec.finished_at_ms
    assert infer_rec.started_at_ms <= infer_rec.finished_at_ms
    assert post_rec.state is StageState.QUEUED and post_rec.started_at_ms is None

    jobs.running("j1", stage="post_process", attempt=1)
    jobs.failed("j1", error="PermanentError: too short", stage="post_process", run_ms=3)
    record = jobs.get("j1")
    assert record is not None and record.state is JobState.FAILED and record.finished_at_ms
    assert [s.state for s in record.stages] == [
        StageState.SUCCEEDED,
        StageState.SUCCEEDED,
        StageState.FAILED,
        StageState.SKIPPED,
    ]


def test_the_api_view_shows_stages_post_cost_and_trace(jobs: JobStore) -> None:
    jobs.create("j2", tenant="acme", kind="wordpress_post", stages=STAGES, site="blog")
    for name in STAGES:
        jobs.running("j2", stage=name, attempt=1, trace_id="ef" * 16)
        jobs.stage_succeeded("j2", stage=name, run_ms=4, last=name == "publish")
    jobs.set_post(
        "j2", PostRecord(post_id=42, link="http://wp/?p=42", status="pending", publish_refused=True)
    )
    jobs.add_cost("j2", 37_500)
    record = jobs.get("j2")
    assert record is not None
    body = view(record).model_dump()
    assert body["state"] == "succeeded" and body["site"] == "blog" and body["trace_id"] == "ef" * 16
    assert body["post"] == {"id": 42, "link": "http://wp/?p=42", "status": "pending", "publish_refused": True}
    assert body["cost"] == {"usd": "0.0000000375", "pico_usd": 37_500}
    assert [s["name"] for s in body["stages"]] == list(STAGES)
    for stage in body["stages"]:
        assert stage["state"] == "succeeded" and stage["attempts"] == 1 and stage["run_ms"] == 4
        assert stage["duration_ms"] is not None and stage["duration_ms"] >= 0
        assert stage["started_at"].endswith("Z") and stage["finished_at"].endswith("Z")


def test_the_outcome_event_is_enqueued_once_with_a_stable_webhook_id(redis_url: str, jobs: JobStore) -> None:
    broker = RedisStreamsBroker(url=redis_url, namespace="t")
    try:
        jobs.create("j3", tenant="acme", kind="wordpress_post", stages=STAGES, site="blog")
        jobs.running("j3", stage="ingest", attempt=1, trace_id="12" * 16)
        jobs.failed("j3", error="PermanentError: bad input", stage="ingest")
        urls = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
        first = events.emit_outcome(broker, jobs, "j3", events.RUN_FAILED, urls)
        again = events.emit_outcome(broker, jobs, "j3", events.RUN_FAILED, urls)  # a redelivery
        assert first is not None and again is None
        assert events.emit_outcome(broker, jobs, "j3", events.RUN_FAILED, []) is None
        entries = broker.client.xrange(broker.keys("webhooks").stream)
        messages = [Message.decode(fields[b"m"]) for _, fields in entries]
        assert [m.args[0] for m in messages] == urls
        event, msg_id = messages[0].args[1], messages[0].args[2]
        assert msg_id == first == stable_msg_id("j3", events.RUN_FAILED)
        assert event["type"] == "run.failed"
        data = event["data"]
        assert (data["job_id"], data["tenant"], data["site"], data["trace_id"]) == (
            "j3",
            "acme",
            "blog",
            "12" * 16,
        )
        assert data["error"] == "PermanentError: bad input" and data["post"] is None
        assert [s["state"] for s in data["stages"]] == ["failed", "skipped", "skipped", "skipped"]
        assert data["cost"] == {"usd": "0", "pico_usd": 0}
    finally:
        broker.close()


# -- publish (the gates and WordPress' answers, with a fake client) -------------------------------------


def test_only_both_gates_together_publish() -> None:
    open_site = Site("blog", "acme", publish_allowed=True)
    closed_site = Site("blog", "acme", publish_allowed=False)
    assert publish.wanted_status(job_may_publish=True, site=open_site) == "publish"
    assert publish.wanted_status(job_may_publish=True, site=closed_site) == "draft"
    assert publish.wanted_status(job_may_publish=False, site=open_site) == "draft"
    assert publish.wanted_status(job_may_publish="true", site=open_site) == "draft"  # only a real True
    assert publish.wanted_status(job_may_publish=None, site=open_site) == "draft"
    assert publish.check_site(open_site, site_id="blog", tenant="acme") is open_site
    with pytest.raises(PermanentError, match="not registered"):
        publish.check_site(None, site_id="blog", tenant="acme")
    with pytest.raises(PermanentError, match="does not belong"):
        publish.check_site(open_site, site_id="blog", tenant="globex")


@dataclass
class FakeWriter:
    """A WordPress client that refuses some statuses, or fails with a WordPress error."""

    refuse: tuple[str, ...] = ()
    error: Exception | None = None

    def __post_init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def upsert_post(self, **call: Any) -> Any:
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        if call["status"] in self.refuse:
            raise PermissionRefused("HTTP 403 rest_cannot_publish", kind="rest_cannot_publish", status=403)
        return PostRef(id=7, status=call["status"], link="http://wp/?p=7", created=len(self.calls) == 1)


ARTICLE = {"title": "Tides", "html": "<p>The sea rises.</p>", "words": 3}


def test_publish_upserts_the_jobs_post_by_its_reference_with_the_trace() -> None:
    writer = FakeWriter()
    out = publish.publish_article(writer, ARTICLE, job_id="j1", status="publish", trace_id="ab" * 16)
    assert out == publish.Published(7, "http://wp/?p=7", "publish", "publish", publish_refused=False)
    (call,) = writer.calls
    assert call == {
        "external_ref": "j1",
        "title": "Tides",
        "content_html": "<p>The sea rises.</p>",
        "status": "publish",
        "trace_id": "ab" * 16,
    }


def test_a_credential_that_may_not_publish_falls_back_to_pending_then_draft() -> None:
    contributor = FakeWriter(refuse=("publish",))
    out = publish.publish_article(contributor, ARTICLE, job_id="j", status="publish", trace_id=None)
    assert (out.status, out.requested_status, out.publish_refused) == ("pending", "publish", True)
    assert [c["status"] for c in contributor.calls] == ["publish", "pending"]

    stricter = FakeWriter(refuse=("publish", "pending"))
    out = publish.publish_article(stricter, ARTICLE, job_id="j", status="publish", trace_id=None)
    assert (out.status, out.publish_refused) == ("draft", True)

    with pytest.raises(PermanentError, match="any post status"):
        publish.publish_article(
            FakeWriter(refuse=("publish", "pending", "draft")),
            ARTICLE,
            job_id="j",
            status="publish",
            trace_id=None,
        )
    # a refused draft is not a publish refusal: the credentials are wrong, for good
    with pytest.raises(PermanentError, match="refused the site's credentials"):
        publish.publish_article(
            FakeWriter(refuse=("draft",)), ARTICLE, job_id="j", status="draft", trace_id=None
        )


def test_an_unavailable_wordpress_is_retried_later_and_a_refused_post_fails() -> None:
    down = FakeWriter(error=SiteUnavailable("breaker open", kind="breaker_open", retry_after_s=2.5))
    with pytest.raises(RetryLater, match="breaker_open") as later:
        publish.publish_article(down, ARTICLE, job_id="j", status="draft", trace_id=None)
    assert later.value.delay == 2500
    refused = FakeWriter(error=WordPressError("HTTP 400", kind="rest_invalid_param", status=400))
    with pytest.raises(PermanentError, match="rest_invalid_param"):
        publish.publish_article(refused, ARTICLE, job_id="j", status="draft", trace_id=None)


# -- infer memoisation (a redelivered infer neither calls the LLM nor charges again) ------------------


def test_a_redelivered_infer_reuses_the_stored_article(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    memo = StageMemo(client, "t", "infer", ttl_s=600)
    proxy = FakeProxy(openai_reply("# Tides\n\nThe sea rises."))
    first = infer.infer(proxy, DOC, tenant="acme", job_id="j9", model="m", max_tokens=9, memo=memo)
    proxy.reply = openai_reply("a different answer")  # what a second LLM call would bring
    again = infer.infer(proxy, DOC, tenant="acme", job_id="j9", model="m", max_tokens=9, memo=memo)
    assert again == first and len(proxy.calls) == 1  # one call, one charge
    assert 590 <= int(client.ttl(memo.key("j9"))) <= 600  # kept as long as the job's record
    other = infer.infer(proxy, DOC, tenant="acme", job_id="j10", model="m", max_tokens=9, memo=memo)
    assert other["draft"] == "a different answer" and len(proxy.calls) == 2

    # a failed call stores nothing: the retry asks the model
    failing = FakeProxy(error=ApiError(503, "upstream_unavailable", "down"))
    with pytest.raises(RetryLater):
        infer.infer(failing, DOC, tenant="acme", job_id="j11", model="m", max_tokens=9, memo=memo)
    assert memo.get("j11") is None
    # two concurrent first runs: the first stored result is the one both keep
    assert memo.remember("j9", {"draft": "late"}) == first
    client.set(memo.key("j12"), b"not json")
    assert memo.get("j12") is None
