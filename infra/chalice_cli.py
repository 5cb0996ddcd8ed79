"""Chalice's own CLI, optionally with its API definition adjusted for moto's API Gateway.

``python -m infra.chalice_cli [--moto] <chalice arguments>`` is what ``infra.deploy`` runs as a
subprocess. Without ``--moto`` it is exactly ``chalice <arguments>``.

Why the adjustment exists, and why it is this narrow
----------------------------------------------------
Chalice describes the REST API as a Swagger 2.0 document (``SwaggerGenerator._BASE_TEMPLATE``:
``swagger: "2.0"``, ``info`` without a ``description``) and hands it to API Gateway's
``ImportRestApi``/``PutRestApi``. Real API Gateway and LocalStack accept that document unchanged.
moto's emulation does not (measured with moto 5.2 on this project's machine):

* without ``info.description`` its import parser fails with ``KeyError: 'description'``
  (``moto/apigateway/models.py``), which the client sees as a 500;
* with a description but ``swagger: "2.0"`` it answers
  ``BadRequestException: Only OpenAPI 3.x.x are currently supported``.

moto reads only ``paths``, the HTTP methods and their ``x-amazon-apigateway-integration`` from the
document, and those are the same in both formats. So relabelling the document as OpenAPI 3.0.1 and
adding a description is enough for moto to build the same resources, methods and Lambda
integrations that real API Gateway would. This is not a Swagger-to-OpenAPI conversion (the
parameter and response shapes stay Swagger 2.0), which is why it is applied only inside this
subprocess, only when ``--moto`` is given, and ``infra.deploy`` gives it only when the endpoint
answers as moto. Chalice itself is not modified on disk.
"""

from __future__ import annotations

import sys
from typing import Any

MOTO_FLAG = "--moto"
OPENAPI_VERSION = "3.0.1"


def relabel_for_moto(document: dict[str, Any]) -> dict[str, Any]:
    """The Swagger 2.0 document Chalice generated, labelled as OpenAPI 3.0.1 with a description."""
    document.pop("swagger", None)
    document["openapi"] = OPENAPI_VERSION
    info = document.setdefault("info", {})
    if not info.get("description"):
        info["description"] = f"{info.get('title') or 'Chalice'} API (deployed by infra.deploy)"
    return document


def adapt_for_moto() -> None:
    """Wrap ``SwaggerGenerator.generate_swagger`` (every subclass inherits it) in this process."""
    from chalice.deploy.swagger import SwaggerGenerator

    original = SwaggerGenerator.generate_swagger
    if getattr(original, "_pressline_moto", False):
        return

    def generate_swagger(self: SwaggerGenerator, app: Any, rest_api: Any = None) -> dict[str, Any]:
        return relabel_for_moto(original(self, app, rest_api))

    generate_swagger._pressline_moto = True  # type: ignore[attr-defined]
    SwaggerGenerator.generate_swagger = generate_swagger  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [MOTO_FLAG]:
        adapt_for_moto()
        args = args[1:]
    from chalice.cli import main as chalice_main

    sys.argv = ["chalice", *args]
    return int(chalice_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
