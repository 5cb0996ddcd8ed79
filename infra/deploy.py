"""Deploy the Chalice functions to the local AWS endpoint, or package them for inspection.

    python -m infra.deploy [--stage dev]            # IAM role, Lambda function, REST API
    python -m infra.deploy --package OUT_DIR        # chalice package (SAM): sam.json + deployment.zip
    python -m infra.deploy --delete [--stage dev]   # remove what a deploy of that stage created
    python -m infra.deploy --stage pr-7 --like dev  # a throw-away stage configured like dev

The deploy is Chalice's own deployer (``chalice deploy``), run as a subprocess on a staged copy of
``functions/``. The endpoint is ``settings.aws_endpoint_url`` (``AWS_ENDPOINT_URL``; the moto server
on 127.0.0.1:4566 by default, or a LocalStack that answers there). What the command does:

* It refuses a non-local endpoint, or no endpoint at all (real AWS), unless ``--allow-remote-aws``
  is given. For a local endpoint it first asks which emulator answers (``localstack.endpoint.probe``,
  plus a fallback for moto, see :func:`emulator_kind`) and stops with a clear message when nothing
  does.
* Credentials: against a local endpoint with none configured, the dummy ones from
  ``shared.aws`` go into the subprocess's environment only. This process's ``os.environ`` is never
  changed. Configured credentials and profiles are passed through untouched.
* moto's API Gateway needs Chalice's Swagger 2.0 document relabelled as OpenAPI 3.0.1, with an
  ``info.description``. That is done by ``infra.chalice_cli --moto`` (its docstring says why it is
  enough), and only when the endpoint answers as moto. LocalStack and AWS get Chalice unchanged.
* Staging: Chalice writes its state into the project (``.chalice/deployed/<stage>.json``) and
  caches the dependency bundle (``.chalice/deployments/<hash>-python3.11.zip``). So the command
  copies ``functions/`` into a work dir (default ``.data/deploy/project``, git-ignored) with
  ``vendor/shared`` resolved to real files, and runs Chalice there. ``functions/`` is never written
  to. The state in the work dir is what makes a second deploy an update, not a duplicate.
  The bundle cache (``--cache-dir``) is shared between work dirs because its key is a hash of
  requirements.txt, app.py and vendor/.
* Packaging downloads the Linux wheels for ``functions/requirements.txt`` with pip, so the first
  run (and every run after ``shared/`` or ``app.py`` changes) needs PyPI.
* Runtime: Chalice uses the version of the Python that runs it, here python3.11.

After Chalice, the ``stream`` function gets a function URL with invoke mode ``RESPONSE_STREAM``
(Chalice knows no function URLs): the same routes, streamed (see shared/api/streaming_runtime.py).

What a deploy on moto gives you: the IAM role, the Lambda functions (runtime, handler, code zip,
environment), the stream function's URL and the REST API with its resources, methods and Lambda
integrations, all listable with boto3. moto never runs the Lambda code. Invoking it fails without
Docker, and with ``use_docker: false`` moto only echoes the payload. So the API answers nothing
useful there. To run the deployed code you need LocalStack with Docker. ``chalice local``
(``make run``) serves the same routes on this machine.

``--delete`` removes the stage's REST API, Lambda functions and IAM role with boto3 by the names
and ids recorded in the state file. ``chalice delete`` is not clean on moto: it fails after
deleting the API.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from localstack.endpoint import probe
from shared.aws import LOCAL_CREDENTIALS, aws_client, is_local_endpoint, uses_local_credentials
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"
DEFAULT_WORK_DIR = ROOT / ".data" / "deploy"
DEFAULT_STAGE = "dev"
#: The app's Lambda function served through a streaming function URL (functions/app.py).
STREAM_FUNCTION = "stream"
#: Chalice's state and bundle cache; never copied from functions/ into the staged project.
_NOT_STAGED = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", "deployed", "deployments"
)


class DeployError(RuntimeError):
    """The deploy cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """Where the deploy goes."""

    endpoint_url: str | None  # None: AWS's own endpoints
    kind: str  # "moto" | "localstack" | "unknown" (a local endpoint) | "aws"
    region: str


@dataclass
class Deployment:
    """What one stage consists of after a deploy, as read back from the endpoint."""

    stage: str
    target: Target
    role: dict[str, Any] = field(default_factory=dict)
    functions: list[dict[str, Any]] = field(default_factory=list)
    api: dict[str, Any] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)  # resource name -> "created" | "updated"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "target": dataclasses.asdict(self.target)}


# -- where, and with which environment ----------------------------------------------------------


def resolve_target(settings: Settings, *, allow_remote: bool) -> Target:
    """The endpoint to deploy to. Anything not on this machine needs ``allow_remote``."""
    url = settings.aws_endpoint_url
    if not is_local_endpoint(url):
        if not allow_remote:
            where = url or "AWS itself (AWS_ENDPOINT_URL is empty)"
            raise DeployError(
                f"refusing to deploy to {where}: it is not a local emulator. "
                "Pass --allow-remote-aws if you really mean to deploy there."
            )
        return Target(url, "aws", settings.aws_region)
    kind = emulator_kind(url or "")
    if kind is None:
        raise DeployError(
            f"nothing answers at {url}. Start the local stack (make run) or a moto server "
            f"(.venv/bin/python -m moto.server -H 127.0.0.1 -p 4566) first."
        )
    return Target(url, kind, settings.aws_region)


def emulator_kind(url: str) -> str | None:
    """``localstack.endpoint.probe``, made robust for moto once a Lambda function exists.

    moto's ``/moto-api/data.json`` (what ``probe`` asks) answers 500 as soon as it holds a Lambda
    function: serialising the Lambda backend makes it look for a Docker daemon. So after the first
    deploy, ``probe`` calls the same moto server "unknown". moto's dashboard (``/moto-api/``)
    still answers, so an "unknown" endpoint that serves it is moto.
    """
    kind = probe(url)
    if kind == "unknown":
        with contextlib.suppress(httpx.HTTPError):
            page = httpx.get(f"{url}/moto-api/", timeout=2.0)
            if page.status_code == 200 and "<title>moto" in page.text[:2000].lower():
                return "moto"
    return kind


def chalice_env(settings: Settings, target: Target, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the Chalice subprocess (a copy: ``base`` is not modified)."""
    env = dict(os.environ if base is None else base)
    env["AWS_DEFAULT_REGION"] = target.region
    if target.endpoint_url:
        env["AWS_ENDPOINT_URL"] = target.endpoint_url
    else:
        env.pop("AWS_ENDPOINT_URL", None)
    if target.kind != "aws" and uses_local_credentials(settings):
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = LOCAL_CREDENTIALS
        env.pop("AWS_SESSION_TOKEN", None)
    # `python -m infra.chalice_cli` must import from the repository, whatever the cwd.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


# -- the staged project -------------------------------------------------------------------------


def stage_project(
    work_dir: Path,
    cache_dir: Path,
    source: Path = FUNCTIONS,
    *,
    stage: str | None = None,
    like: str | None = None,
) -> Path:
    """Copy ``source`` into ``work_dir/project`` (symlinks resolved), keeping Chalice's state there.

    Everything except ``.chalice/deployed`` is replaced, so a file removed from ``functions/``
    disappears from the next deploy too. ``.chalice/deployments`` is a symlink to ``cache_dir``.
    With ``like``, the staged config gives ``stage`` the settings of the stage ``like`` (memory,
    timeout, environment variables...), so a throw-away stage is deployed exactly as that one.
    """
    project = work_dir / "project"
    project.mkdir(parents=True, exist_ok=True)
    for entry in project.iterdir():
        if entry.name == ".chalice":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in source.iterdir():
        if entry.name in ("__pycache__", ".chalice"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, project / entry.name, symlinks=False, ignore=_NOT_STAGED)
        else:
            shutil.copy2(entry, project / entry.name)
    chalice_dir = project / ".chalice"
    chalice_dir.mkdir(exist_ok=True)
    for entry in (source / ".chalice").iterdir():
        if entry.is_file():
            shutil.copy2(entry, chalice_dir / entry.name)
    if like is not None and stage is not None and like != stage:
        config_path = chalice_dir / "config.json"
        config = json.loads(config_path.read_text())
        stages = config.setdefault("stages", {})
        if like not in stages:
            raise DeployError(f"--like {like}: there is no stage {like!r} in functions/.chalice/config.json")
        if stage in stages:
            raise DeployError(f"--like: stage {stage!r} is already configured; deploy it as it is")
        stages[stage] = copy.deepcopy(stages[like])
        config_path.write_text(json.dumps(config, indent=2))
    cache_dir.mkdir(parents=True, exist_ok=True)
    deployments = chalice_dir / "deployments"
    if deployments.is_symlink() and deployments.resolve() != cache_dir.resolve():
        deployments.unlink()
    if not deployments.exists() and not deployments.is_symlink():
        deployments.symlink_to(cache_dir.resolve(), target_is_directory=True)
    return project


def state_file(project: Path, stage: str) -> Path:
    return project / ".chalice" / "deployed" / f"{stage}.json"


def read_state(project: Path, stage: str) -> list[dict[str, Any]]:
    path = state_file(project, stage)
    if not path.exists():
        return []
    resources: list[dict[str, Any]] = json.loads(path.read_text())["resources"]
    return resources


def run_chalice(
    project: Path, args: Sequence[str], env: Mapping[str, str], *, moto: bool = False
) -> subprocess.CompletedProcess[str]:
    """``chalice --project-dir PROJECT ARGS``; its output goes to stderr; raises on failure."""
    command = [sys.executable, "-m", "infra.chalice_cli"]
    if moto:
        command.append("--moto")
    command += ["--project-dir", str(project), *args]
    proc = subprocess.run(command, cwd=project, env=dict(env), capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise DeployError(f"chalice {' '.join(args)} failed with exit code {proc.returncode} (output above)")
    return proc


# -- deploy, describe, delete -------------------------------------------------------------------


def deploy(
    settings: Settings,
    *,
    stage: str = DEFAULT_STAGE,
    work_dir: Path = DEFAULT_WORK_DIR,
    cache_dir: Path | None = None,
    allow_remote: bool = False,
    like: str | None = None,
) -> Deployment:
    target = resolve_target(settings, allow_remote=allow_remote)
    project = stage_project(work_dir, cache_dir or DEFAULT_WORK_DIR / "cache", stage=stage, like=like)
    before = {r["name"] for r in read_state(project, stage)}
    run_chalice(
        project,
        ["deploy", "--stage", stage],
        chalice_env(settings, target),
        moto=target.kind == "moto",
    )
    ensure_stream_url(settings, target, project, stage)
    deployment = describe(settings, target, project, stage)
    deployment.actions = {
        r["name"]: ("updated" if r["name"] in before else "created") for r in read_state(project, stage)
    }
    return deployment


def ensure_stream_url(settings: Settings, target: Target, project: Path, stage: str) -> str | None:
    """Give the ``stream`` function a function URL that streams (invoke mode RESPONSE_STREAM).

    Chalice creates the function (``@app.lambda_function(name="stream")``) but knows no function
    URLs. Auth type NONE: the app checks its own bearer tokens, as it does behind API Gateway.
    Returns the URL, or None when the stage has no such function.
    """
    arn = next(
        (
            r["lambda_arn"]
            for r in read_state(project, stage)
            if r["resource_type"] == "lambda_function" and r["name"] == STREAM_FUNCTION
        ),
        None,
    )
    if arn is None:
        return None
    lam = aws_client("lambda", _settings_for(settings, target))
    try:
        config = lam.get_function_url_config(FunctionName=arn)
        if config.get("InvokeMode") != "RESPONSE_STREAM" or config.get("AuthType") != "NONE":
            config = lam.update_function_url_config(
                FunctionName=arn, AuthType="NONE", InvokeMode="RESPONSE_STREAM"
            )
    except lam.exceptions.ResourceNotFoundException:
        config = lam.create_function_url_config(
            FunctionName=arn, AuthType="NONE", InvokeMode="RESPONSE_STREAM"
        )
    with contextlib.suppress(lam.exceptions.ResourceConflictException):
        lam.add_permission(
            FunctionName=arn,
            StatementId="pressline-function-url",
            Action="lambda:InvokeFunctionUrl",
            Principal="*",
            FunctionUrlAuthType="NONE",
        )
    return str(config["FunctionUrl"])


def _settings_for(settings: Settings, target: Target) -> Settings:
    return dataclasses.replace(settings, aws_endpoint_url=target.endpoint_url, aws_region=target.region)


def describe(settings: Settings, target: Target, project: Path, stage: str) -> Deployment:
    """Read the stage's resources back from the endpoint (not from Chalice's output)."""
    settings = _settings_for(settings, target)
    result = Deployment(stage=stage, target=target)
    for resource in read_state(project, stage):
        kind = resource["resource_type"]
        if kind == "iam_role":
            role = aws_client("iam", settings).get_role(RoleName=resource["role_name"])["Role"]
            result.role = {"resource": resource["name"], "name": role["RoleName"], "arn": role["Arn"]}
        elif kind == "lambda_function":
            fn = aws_client("lambda", settings).get_function_configuration(
                FunctionName=resource["lambda_arn"]
            )
            result.functions.append(
                {
                    "resource": resource["name"],
                    "name": fn["FunctionName"],
                    "arn": fn["FunctionArn"],
                    "runtime": fn.get("Runtime"),
                    "handler": fn.get("Handler"),
                    "memory_mb": fn.get("MemorySize"),
                    "timeout_s": fn.get("Timeout"),
                    "code_bytes": fn.get("CodeSize"),
                    **_function_url(settings, resource["lambda_arn"]),
                }
            )
        elif kind == "rest_api":
            result.api = _describe_api(settings, target, resource)
    return result


def _function_url(settings: Settings, arn: str) -> dict[str, Any]:
    lam = aws_client("lambda", settings)
    try:
        config = lam.get_function_url_config(FunctionName=arn)
    except lam.exceptions.ResourceNotFoundException:
        return {}
    return {"function_url": config["FunctionUrl"], "invoke_mode": config.get("InvokeMode", "BUFFERED")}


def _describe_api(settings: Settings, target: Target, resource: dict[str, Any]) -> dict[str, Any]:
    gateway = aws_client("apigateway", settings)
    api_id = resource["rest_api_id"]
    api = gateway.get_rest_api(restApiId=api_id)
    routes: list[dict[str, Any]] = []
    for page in gateway.get_paginator("get_resources").paginate(restApiId=api_id, embed=["methods"]):
        for item in page["items"]:
            methods = sorted(m for m in item.get("resourceMethods", {}) if m != "OPTIONS")
            if methods:
                routes.append({"path": item["path"], "methods": methods})
    routes.sort(key=lambda r: r["path"])
    stages = [s["stageName"] for s in gateway.get_stages(restApiId=api_id)["item"]]
    described: dict[str, Any] = {
        "resource": resource["name"],
        "id": api_id,
        "name": api.get("name"),
        "routes": routes,
        "stages": stages,
        "url": resource.get("rest_api_url"),
    }
    if target.kind == "localstack" and target.endpoint_url:
        described["local_url"] = f"{target.endpoint_url}/restapis/{api_id}/{stages[0]}/_user_request_/"
    return described


def delete(
    settings: Settings,
    *,
    stage: str = DEFAULT_STAGE,
    work_dir: Path = DEFAULT_WORK_DIR,
    allow_remote: bool = False,
) -> list[str]:
    """Remove what the stage's state file records (API, functions, role); returns what went."""
    target = resolve_target(settings, allow_remote=allow_remote)
    settings = _settings_for(settings, target)
    project = work_dir / "project"
    removed: list[str] = []
    resources = read_state(project, stage)
    for resource in (r for r in resources if r["resource_type"] == "rest_api"):
        gateway = aws_client("apigateway", settings)
        with contextlib.suppress(gateway.exceptions.NotFoundException):
            gateway.delete_rest_api(restApiId=resource["rest_api_id"])
            removed.append(f"rest api {resource['rest_api_id']}")
    for resource in (r for r in resources if r["resource_type"] == "lambda_function"):
        lam = aws_client("lambda", settings)
        with contextlib.suppress(lam.exceptions.ResourceNotFoundException):
            lam.delete_function(FunctionName=resource["lambda_arn"])
            removed.append(f"lambda {resource['lambda_arn'].rsplit(':', 1)[-1]}")
    for resource in (r for r in resources if r["resource_type"] == "iam_role"):
        iam = aws_client("iam", settings)
        name = resource["role_name"]
        with contextlib.suppress(iam.exceptions.NoSuchEntityException):
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
            for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
            iam.delete_role(RoleName=name)
            removed.append(f"iam role {name}")
    state_file(project, stage).unlink(missing_ok=True)
    return removed


def package(
    settings: Settings,
    out_dir: Path,
    *,
    stage: str = DEFAULT_STAGE,
    work_dir: Path = DEFAULT_WORK_DIR,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """``chalice package`` (SAM) into ``out_dir``; returns a summary of the artifact."""
    project = stage_project(work_dir, cache_dir or DEFAULT_WORK_DIR / "cache")
    # Packaging talks to no endpoint; Chalice still wants a region (and a session to create).
    local = is_local_endpoint(settings.aws_endpoint_url)
    env = chalice_env(
        settings, Target(settings.aws_endpoint_url, "local" if local else "aws", settings.aws_region)
    )
    out_dir = out_dir.resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    run_chalice(project, ["package", "--stage", stage, str(out_dir)], env)
    with zipfile.ZipFile(out_dir / "deployment.zip") as zf:
        names = zf.namelist()
    template = json.loads((out_dir / "sam.json").read_text())
    resources = {
        name: {
            "type": body["Type"],
            **{k: body["Properties"][k] for k in ("Runtime", "Handler") if k in body.get("Properties", {})},
        }
        for name, body in template["Resources"].items()
    }
    return {
        "out_dir": str(out_dir),
        "zip_bytes": (out_dir / "deployment.zip").stat().st_size,
        "zip_files": len(names),
        "shared_files": sorted(n for n in names if n.startswith("shared/")),
        "has_app": "app.py" in names,
        "resources": resources,
    }


# -- the command --------------------------------------------------------------------------------


def print_deployment(d: Deployment) -> None:
    where = d.target.endpoint_url or "AWS"
    print(f"Deployed stage {d.stage!r} to {where} ({d.target.kind})")
    if d.role:
        print(f"  IAM role      {d.role['name']}  [{d.actions.get(d.role['resource'], 'present')}]")
        print(f"                {d.role['arn']}")
    for fn in d.functions:
        action = d.actions.get(fn["resource"], "present")
        print(f"  Lambda        {fn['name']}  runtime={fn['runtime']} handler={fn['handler']}  [{action}]")
        print(f"                {fn['memory_mb']} MB, {fn['timeout_s']} s, code {fn['code_bytes']} bytes")
        if "function_url" in fn:
            print(f"                function URL {fn['function_url']} ({fn['invoke_mode']})")
    if d.api:
        action = d.actions.get(d.api["resource"], "present")
        print(f"  REST API      {d.api['id']} ({d.api['name']})  [{action}]")
        for route in d.api["routes"]:
            print(f"                {','.join(route['methods']):<6} {route['path']}")
        print(f"  Stage URL     {d.api['url']}  (stages: {', '.join(d.api['stages'])})")
        if "local_url" in d.api:
            print(f"  Local URL     {d.api['local_url']}")
    if d.target.kind == "moto":
        print(
            "  Note: moto records these resources but never runs Lambda code, so the API cannot answer"
            " requests there. Use `chalice local` (make run) to serve the routes, or LocalStack with"
            " Docker to run the deployed function."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", default=DEFAULT_STAGE, help="Chalice stage (default: dev)")
    parser.add_argument("--endpoint-url", help="override AWS_ENDPOINT_URL ('' means AWS itself)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="staged project and state")
    parser.add_argument(
        "--cache-dir", type=Path, help="dependency bundle cache (default: .data/deploy/cache)"
    )
    parser.add_argument(
        "--like", metavar="STAGE", help="deploy --stage with the config of this stage (a throw-away copy)"
    )
    parser.add_argument("--allow-remote-aws", action="store_true", help="allow a non-local endpoint")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--package", type=Path, metavar="OUT_DIR", help="chalice package (SAM) into OUT_DIR")
    action.add_argument("--delete", action="store_true", help="delete the stage's resources")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    if args.endpoint_url is not None:
        settings = dataclasses.replace(settings, aws_endpoint_url=args.endpoint_url or None)
    try:
        if args.package:
            summary = package(
                settings, args.package, stage=args.stage, work_dir=args.work_dir, cache_dir=args.cache_dir
            )
            if args.json:
                print(json.dumps(summary, indent=2))
            else:
                print(f"Packaged stage {args.stage!r} into {summary['out_dir']}")
                print(f"  deployment.zip  {summary['zip_bytes']} bytes, {summary['zip_files']} files")
                shared_count = len(summary["shared_files"])
                print(f"  app.py inside: {summary['has_app']}; shared/ files inside: {shared_count}")
                for name, res in summary["resources"].items():
                    extra = " ".join(f"{k}={v}" for k, v in res.items() if k != "type")
                    print(f"  {name:<28} {res['type']} {extra}".rstrip())
            return 0
        if args.delete:
            removed = delete(
                settings, stage=args.stage, work_dir=args.work_dir, allow_remote=args.allow_remote_aws
            )
            print(
                json.dumps(removed)
                if args.json
                else "\n".join(["Deleted:", *removed] if removed else ["Nothing to delete"])
            )
            return 0
        deployment = deploy(
            settings,
            stage=args.stage,
            work_dir=args.work_dir,
            cache_dir=args.cache_dir,
            allow_remote=args.allow_remote_aws,
            like=args.like,
        )
    except DeployError as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(deployment.to_json(), indent=2))
    else:
        print_deployment(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
