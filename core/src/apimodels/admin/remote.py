"""The admin API as a client: how ``apimodels --url URL --admin-token T ...`` drives a
running server instead of opening its database. The answers are the service functions'
own (the API shapes them with the same models), so the CLI prints either alike."""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import APIError
from .api import PREFIX


class RemoteError(APIError):
    """An error the server answered (its status, code and message), or none at all."""


class RemoteAdmin:
    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.client = httpx.Client(
            base_url=self.url + PREFIX,
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """The JSON answer of ``method PREFIX+path`` (text for an export)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.client.request(method, path, json=body, params=query)
        except httpx.HTTPError as exc:
            raise RemoteError(
                f"could not reach {self.url}: {type(exc).__name__}", code="unreachable"
            ) from None
        if response.is_success:
            if response.headers.get("content-type", "").startswith("application/json"):
                return response.json()
            return response.text
        try:
            error = response.json()["error"]
            message, code = error["message"], error.get("code")
        except (ValueError, KeyError, TypeError):
            message, code = response.text[:200] or response.reason_phrase, None
        raise RemoteError(f"{message} (HTTP {response.status_code})", code=code,
                          status=response.status_code)  # fmt: skip
