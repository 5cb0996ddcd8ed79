"""``make burn-in``'s short mode, in the suite: the whole stack with its WordPress under load while a
worker, the API and Redis are killed and the LLM providers fail, then every accepted job
accounted for (issue 15). The long run is ``make burn-in``; this proves the harness and the
recovery paths still work together on every change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_short_burn_in_meets_every_target(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.burn_in", "--short", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    (written,) = tmp_path.glob("burn_in-*.json")
    result = json.loads(written.read_text())
    targets = result["targets"]
    assert done.returncode == 0, (done.stdout, done.stderr[-4000:], targets)
    assert result["ok"] and all(target["ok"] for target in targets.values()), targets
    assert targets["accepted"]["value"] > 0
    assert [targets[name]["value"] for name in ("lost", "stuck", "duplicate_posts")] == [0, 0, 0]
    played = {record["fault"]["kind"]: record for record in result["faults"]}
    assert set(played) == {"kill_worker", "kill_api", "kill_redis", "llm_503"}  # each fault was played
    assert all(record["error"] is None and record["recovery_s"] is not None for record in played.values())
