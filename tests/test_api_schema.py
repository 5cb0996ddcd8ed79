"""Schemathesis against a real ``chalice local``, driven by the OpenAPI document the API serves.

The CLI (``st run``) runs as a subprocess against ``/v1/openapi.json`` with a valid editor token,
so the authenticated operations are exercised past the token check. Examples, coverage and fuzzing
phases, positive and negative data, a fixed seed and a bounded number of cases per operation keep
it reproducible and well under 90 s.

* No response may be a server error (5xx). This is the issue's acceptance check.
* Responses must also conform to the document: status code, content type, headers and body schema.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from localstack.endpoint import Endpoint
from shared.config import Settings
from tests.support.api import (
    chalice_local,
    ensure_bucket,
    make_tenant,
    new_whsec,
    put_site_secret,
    register_site,
)
from tests.support.workers import BIN

MAX_EXAMPLES = 40
SEED = 20261124
CONFORMANCE = (
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


#: The coverage phase also sends methods the document does not define and expects a 405. TRACE and
#: QUERY are left out: ``chalice local`` is Python's ``http.server``, which answers 501 for a method
#: it has no handler for, before the request reaches Chalice or the app. API Gateway never forwards
#: them either. Every other method goes through the app and must get its 405.
CONFIG = """
[phases.coverage]
unexpected-methods = ["get", "put", "post", "delete", "options", "patch"]
"""


def schemathesis(url: str, token: str, checks: tuple[str, ...], report_dir: Path) -> dict[str, Any]:
    report_dir.mkdir(parents=True, exist_ok=True)
    config = report_dir / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(BIN / "st"),
        "--config-file",
        str(config),
        "run",
        f"{url}/v1/openapi.json",
        "--checks",
        ",".join(checks),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--header",
        f"Authorization: Bearer {token}",
        "--phases",
        "examples,coverage,fuzzing",
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--max-failures",
        "20",
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]
    proc = subprocess.run(command, cwd=report_dir, capture_output=True, text=True, timeout=180, check=False)
    return {"rc": proc.returncode, "output": proc.stdout + proc.stderr}


@pytest.fixture
def served(redis_url: str, aws_endpoint: Endpoint, tmp_path: Path) -> Any:
    settings = Settings(broker_url=redis_url, aws_endpoint_url=aws_endpoint.url)
    ensure_bucket(settings)
    put_site_secret(settings, "blog-1", new_whsec())
    client = redis.Redis.from_url(redis_url)
    tenant = make_tenant(client, settings, "fuzz")
    register_site(client, settings, "blog-1", "fuzz")
    # The per-tenant rate limit would turn most generated requests into 429s: lift it.
    with chalice_local(
        redis_url, tmp_path / "chalice.log", PRESSLINE_API_RATE_LIMIT="100000/s:100000"
    ) as url:
        yield url, tenant.editor, tmp_path


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_responses_match_the_document(served: Any) -> None:
    url, token, tmp_path = served
    result = schemathesis(url, token, ("not_a_server_error", *CONFORMANCE), tmp_path / "report")
    log = (tmp_path / "chalice.log").read_text(errors="replace")
    assert result["rc"] == 0, f"{result['output'][-12000:]}\n--- chalice local log ---\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    # The token got the generated requests past authentication: jobs were created and read back.
    assert '"POST /v1/jobs HTTP/1.1" 202' in log, json.dumps(result["output"][-600:])
    assert re.search(r'"GET /v1/jobs/\S+ HTTP/1.1" 200', log), json.dumps(result["output"][-600:])
