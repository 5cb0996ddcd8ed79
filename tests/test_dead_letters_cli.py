"""The operator's dead-letter commands, run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys

from dramatiq.message import Message

from shared.streams import RedisStreamsBroker
from tests.support.workers import ROOT, worker_env


def run(redis_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "workers.dead_letters", *args],
        cwd=ROOT,
        env=worker_env(redis_url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_list_requeue_and_purge_dead_letters(redis_url: str) -> None:
    broker = RedisStreamsBroker(url=redis_url)
    broker.declare_queue("publish")
    for i in range(3):
        message = Message(queue_name="publish", actor_name="publish", args=(i,), kwargs={}, options={})
        broker.dead_letter(
            "publish", "0-1", broker.encoder.encode(message.asdict()), f"HTTPError: 503 #{i}", 5
        )

    listed = [json.loads(line) for line in run(redis_url, "list", "publish").splitlines()]
    assert [d["error"] for d in listed] == ["HTTPError: 503 #2", "HTTPError: 503 #1", "HTTPError: 503 #0"]
    assert {d["attempts"] for d in listed} == {5}

    assert run(redis_url, "requeue", "publish", listed[0]["entry_id"]).strip() == "requeued 1 from publish"
    assert broker.admin.stats("publish").backlog == 1
    assert run(redis_url, "purge", "publish").strip() == "purged 2 from publish"

    stats = {
        json.loads(line)["queue_name"]: json.loads(line) for line in run(redis_url, "stats").splitlines()
    }
    assert (stats["publish"]["backlog"], stats["publish"]["dead"]) == (1, 0)
    assert set(stats) == {"ingest", "infer", "post-process", "publish", "webhooks"}
    broker.close()
