"""``python -m infra.deploy`` against a real moto server: role, Lambda and REST API exist, a second
deploy updates them in place, ``--package`` puts the shared code inside the artifact.

This module starts a moto server of its own on a free port (the same ``moto.server`` as the
session's ``aws_endpoint``, via ``localstack.endpoint.ensure_endpoint``) rather than deploying into
the shared one on 4566. Once a moto server holds a Lambda function, its ``/moto-api/data.json``
answers 500 for good (serialising the Lambda backend looks for Docker), even after the function is
deleted. ``localstack.endpoint.probe`` then calls it "unknown", and ``make run``
(``infra.devstack.start_endpoint``) refuses it. That would break the devstack tests that run on
the shared endpoint after this module. The deploy still uses a stage name of its own
(``pressline-<stage>``) and removes what it created by id. Chalice's state goes to a temporary
work dir, never to ``functions/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.deploy import delete, emulator_kind, read_state
from infra.redis_server import free_port, stop_process
from localstack.endpoint import Endpoint, ensure_endpoint
from shared.aws import aws_client
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
ROUTES = {
    "/v1/jobs": ["POST"],
    "/v1/jobs/{job_id}": ["GET"],
    "/v1/webhooks/wordpress/{site}": ["POST"],
    "/v1/openapi.json": ["GET"],
}
SHARED_IN_ARTIFACT = ("shared/config.py", "shared/api/services.py", "shared/webhooks.py")


def run_deploy(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    proc = subprocess.run(
        [sys.executable, "-m", "infra.deploy", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[Endpoint]:
    """A moto server for this module only (see the module docstring); shadows the session fixture."""
    endpoint = ensure_endpoint(port=free_port())
    assert endpoint.process is not None and endpoint.kind == "moto"
    try:
        yield endpoint
    finally:
        stop_process(endpoint.process)


@pytest.fixture(scope="module")
def settings(aws_endpoint: Endpoint) -> Settings:
    return Settings(aws_endpoint_url=aws_endpoint.url)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("deploy")
    # One bundle cache for the module, so the Linux wheels are downloaded once (deploy and package).
    return {"work": base / "work", "cache": base / "cache"}


@pytest.fixture(scope="module")
def deployed(aws_endpoint: Endpoint, settings: Settings, work: dict[str, Path]) -> Iterator[dict[str, Any]]:
    stage = "t" + uuid.uuid4().hex[:8]
    # A stage of its own, configured like dev (memory, timeout, environment variables).
    args = [
        "--stage",
        stage,
        "--like",
        "dev",
        "--work-dir",
        str(work["work"]),
        "--cache-dir",
        str(work["cache"]),
    ]
    first = run_deploy(aws_endpoint.url, *args, "--json")
    try:
        yield {"stage": stage, "args": args, "first": json.loads(first.stdout)}
    finally:
        delete(settings, stage=stage, work_dir=work["work"])


def test_deploy_creates_role_function_and_api(deployed: dict[str, Any], settings: Settings) -> None:
    stage = deployed["stage"]
    name = f"pressline-{stage}"
    assert deployed["first"]["actions"] == {
        "default-role": "created",
        "api_handler": "created",
        "stream": "created",
        "rest_api": "created",
    }

    role = aws_client("iam", settings).get_role(RoleName=name)["Role"]
    assert role["RoleName"] == name
    assert "lambda.amazonaws.com" in json.dumps(role["AssumeRolePolicyDocument"])

    fn = aws_client("lambda", settings).get_function_configuration(FunctionName=name)
    assert fn["Runtime"] == "python3.11"
    assert fn["Handler"] == "app.app"
    assert fn["Role"] == role["Arn"]
    dev = json.loads((ROOT / "functions" / ".chalice" / "config.json").read_text())["stages"]["dev"]
    assert fn["MemorySize"] == dev["lambda_memory_size"] and fn["Timeout"] == dev["lambda_timeout"]
    assert fn["Environment"]["Variables"] == dev["environment_variables"]

    api_id = deployed["first"]["api"]["id"]
    gateway = aws_client("apigateway", settings)
    items = gateway.get_resources(restApiId=api_id, embed=["methods"], limit=500)["items"]
    routes = {i["path"]: sorted(m for m in i.get("resourceMethods", {}) if m != "OPTIONS") for i in items}
    for path, methods in ROUTES.items():
        assert routes.get(path) == methods, routes
    jobs = next(i for i in items if i["path"] == "/v1/jobs")
    integration = gateway.get_integration(restApiId=api_id, resourceId=jobs["id"], httpMethod="POST")
    assert integration["type"].upper() == "AWS_PROXY"  # moto keeps the lower case of the document
    assert fn["FunctionArn"] in integration["uri"]
    assert [s["stageName"] for s in gateway.get_stages(restApiId=api_id)["item"]] == ["api"]


def test_the_stream_function_has_a_streaming_function_url(
    deployed: dict[str, Any], settings: Settings
) -> None:
    """Same code and role as the API handler; its exec wrapper is the streaming runtime."""
    lam = aws_client("lambda", settings)
    name = f"pressline-{deployed['stage']}-stream"
    fn = lam.get_function_configuration(FunctionName=name)
    api = lam.get_function_configuration(FunctionName=f"pressline-{deployed['stage']}")
    assert (
        fn["Handler"] == "app.stream" and fn["Role"] == api["Role"] and fn["CodeSha256"] == api["CodeSha256"]
    )
    assert fn["Timeout"] == 300
    assert (
        fn["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"] == "/var/task/pressline-streaming-runtime"
    )
    url = lam.get_function_url_config(FunctionName=name)
    assert url["InvokeMode"] == "RESPONSE_STREAM" and url["AuthType"] == "NONE"
    described = {f["name"]: f for f in deployed["first"]["functions"]}
    assert described[name]["function_url"] == url["FunctionUrl"]
    assert described[name]["invoke_mode"] == "RESPONSE_STREAM"
    assert "function_url" not in described[f"pressline-{deployed['stage']}"]


def test_redeploy_updates_in_place(
    deployed: dict[str, Any], settings: Settings, aws_endpoint: Endpoint, work: dict[str, Path]
) -> None:
    gateway = aws_client("apigateway", settings)
    lam = aws_client("lambda", settings)
    iam = aws_client("iam", settings)
    name = f"pressline-{deployed['stage']}"

    def inventory() -> tuple[set[str], list[str], list[str]]:
        apis = {a["id"] for a in gateway.get_rest_apis(limit=500)["items"]}
        functions = [
            f["FunctionName"]
            for page in lam.get_paginator("list_functions").paginate()
            for f in page["Functions"]
            if f["FunctionName"] in (name, f"{name}-stream")
        ]
        roles = [
            r["RoleName"]
            for page in iam.get_paginator("list_roles").paginate()
            for r in page["Roles"]
            if r["RoleName"] == name
        ]
        return apis, functions, roles

    before = inventory()
    second = json.loads(run_deploy(aws_endpoint.url, *deployed["args"], "--json").stdout)
    assert inventory() == before
    assert sorted(before[1]) == [name, f"{name}-stream"] and before[2] == [name]
    assert second["actions"] == {
        "default-role": "updated",
        "api_handler": "updated",
        "stream": "updated",
        "rest_api": "updated",
    }
    assert second["api"]["id"] == deployed["first"]["api"]["id"]
    assert [f["arn"] for f in second["functions"]] == [f["arn"] for f in deployed["first"]["functions"]]
    assert len(read_state(work["work"] / "project", deployed["stage"])) == 4
    url = lam.get_function_url_config(FunctionName=f"{name}-stream")
    assert url["FunctionUrl"] == {f["name"]: f for f in second["functions"]}[f"{name}-stream"]["function_url"]


def test_human_output_names_what_was_deployed(deployed: dict[str, Any], aws_endpoint: Endpoint) -> None:
    out = run_deploy(aws_endpoint.url, *deployed["args"]).stdout
    assert f"pressline-{deployed['stage']}" in out
    assert "runtime=python3.11 handler=app.app" in out
    assert deployed["first"]["api"]["id"] in out
    assert "/v1/webhooks/wordpress/{site}" in out
    assert "execute-api" in out  # the stage URL
    assert "(RESPONSE_STREAM)" in out  # the stream function's URL


def test_functions_dir_is_left_alone(deployed: dict[str, Any]) -> None:
    assert not (ROOT / "functions" / ".chalice" / "deployed" / f"{deployed['stage']}.json").exists()
    assert not (ROOT / "functions" / ".chalice" / "deployments").exists()


def test_refuses_a_remote_endpoint(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "infra.deploy", "--work-dir", str(tmp_path), "--stage", "never"],
        cwd=ROOT,
        env={**os.environ, "AWS_ENDPOINT_URL": "https://apigateway.us-east-1.amazonaws.com"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--allow-remote-aws" in proc.stderr
    assert not (tmp_path / "project").exists()


def test_package_puts_shared_inside_the_artifact(
    aws_endpoint: Endpoint, work: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = json.loads(
        run_deploy(
            aws_endpoint.url,
            "--package",
            str(out),
            "--work-dir",
            str(work["work"]),
            "--cache-dir",
            str(work["cache"]),
            "--json",
        ).stdout
    )
    with zipfile.ZipFile(out / "deployment.zip") as zf:
        names = set(zf.namelist())
        assert "app.py" in names
        for path in SHARED_IN_ARTIFACT:
            assert path in names
            assert zf.read(path) == (ROOT / path).read_bytes()
        assert any(n.startswith("pydantic_core/") for n in names)  # requirements.txt was bundled
        wrapper = zf.getinfo("pressline-streaming-runtime")  # the stream function's exec wrapper
        assert (wrapper.external_attr >> 16) & 0o111, "the exec wrapper must stay executable"
        assert "shared/api/streaming_runtime.py" in names
    sam = json.loads((out / "sam.json").read_text())
    handler = sam["Resources"]["APIHandler"]
    assert handler["Type"] == "AWS::Serverless::Function"
    assert handler["Properties"]["Runtime"] == "python3.11"
    assert handler["Properties"]["Handler"] == "app.app"
    assert summary["has_app"] is True


def test_moto_is_still_recognised_after_a_deploy(deployed: dict[str, Any], aws_endpoint: Endpoint) -> None:
    """``/moto-api/data.json`` answers 500 once a Lambda exists; the deploy still knows it is moto."""
    assert emulator_kind(aws_endpoint.url) == "moto"
