"""Test helpers for apimodels and its plugins (the start of the provider conformance kit).

``serve(app)`` runs any ASGI app (the gateway, a simulator) under uvicorn on 127.0.0.1 in a
background thread, so tests talk to it over a real socket. ``OpenAPI`` checks requests and
responses against a provider's published API description.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import uvicorn

from ..http.protocol import CorkedHttpToolsProtocol


def bound_socket() -> socket.socket:
    """A socket bound to an ephemeral port of 127.0.0.1 (its URL is known before serving)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve(
    app: Any,
    *,
    lifespan: Literal["auto", "on", "off"] = "on",
    sock: socket.socket | None = None,
) -> Iterator[str]:
    """Serve ``app`` on an ephemeral port of 127.0.0.1 (or on ``sock``); yield its origin
    ``http://127.0.0.1:PORT``."""
    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        http=CorkedHttpToolsProtocol,  # as ``apimodels serve`` runs
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (still common in 3.1 documents, OpenAI's among them)
    as JSON Schema: the schema, or null."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


class OpenAPI:
    """Checks bodies against a provider's published OpenAPI 3.1 description.

    For simulator and plugin tests: ``validate_request`` checks what a plugin sends upstream,
    ``validate_response`` what a simulator answers. Needs ``jsonschema`` (the ``testing``
    extra). A failure raises ``AssertionError`` naming the operation, the field and the rule.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        from jsonschema import Draft202012Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        spec = _nullable_to_json_schema(spec)
        self.spec = spec
        self._validator = Draft202012Validator
        self._registry = Registry().with_resource(
            "urn:openapi", Resource(contents=spec, specification=DRAFT202012)
        )

    @classmethod
    def load(cls, path: str | Path) -> OpenAPI:
        return cls(json.loads(Path(path).read_text()))

    def _operation(self, method: str, path: str) -> dict[str, Any]:
        try:
            return self.spec["paths"][path][method.lower()]
        except KeyError:
            raise AssertionError(f"the description has no {method.upper()} {path}") from None

    def _check(self, pointer: list[str], body: Any, what: str) -> None:
        escaped = "/".join(p.replace("~", "~0").replace("/", "~1") for p in pointer)
        validator = self._validator({"$ref": f"urn:openapi#/{escaped}"}, registry=self._registry)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"{what} does not match the published description:"]
            for e in errors[:5]:
                where = "/".join(map(str, e.absolute_path)) or "(body)"
                lines.append(f"  {where}: {e.message[:300]}")
            raise AssertionError("\n".join(lines))

    def validate_request(
        self, method: str, path: str, body: Any, *, content_type: str = "application/json"
    ) -> None:
        """Check a request body (for multipart, a dict of the form fields)."""
        op = self._operation(method, path)
        content = op["requestBody"]["content"]
        if content_type not in content:
            raise AssertionError(
                f"{method.upper()} {path} takes {', '.join(content)}, not {content_type}"
            )
        pointer = ["paths", path, method.lower(), "requestBody", "content", content_type, "schema"]
        self._check(pointer, body, f"request {method.upper()} {path}")

    def validate_response(
        self,
        method: str,
        path: str,
        status: int,
        body: Any,
        *,
        content_type: str = "application/json",
    ) -> None:
        """Check a response body against the schema of its status, of its status range
        (``4XX``, as OpenAPI allows) or ``default``."""
        op = self._operation(method, path)
        responses = op["responses"]
        key = next((k for k in (str(status), f"{status // 100}XX") if k in responses), "default")
        if key not in responses:
            raise AssertionError(f"{method.upper()} {path} documents no {status} answer")
        content = responses[key].get("content", {})
        if content_type not in content:
            raise AssertionError(
                f"{method.upper()} {path} {status} documents {', '.join(content) or 'no body'}, not {content_type}"
            )
        pointer = [
            "paths",
            path,
            method.lower(),
            "responses",
            key,
            "content",
            content_type,
            "schema",
        ]
        self._check(pointer, body, f"response {status} to {method.upper()} {path}")

    def validate_schema(self, name: str, body: Any) -> None:
        """Check a body against a named component schema (stream chunks, error bodies)."""
        if name not in self.spec["components"]["schemas"]:
            raise AssertionError(f"the description has no schema {name}")
        self._check(["components", "schemas", name], body, name)
