"""Helpers for the emulator's own tests: an API client that builds URLs from the entity path."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from emulator.process import EmulatorProcess
from emulator.schema import SCHEMA


class Api:
    """`requests` against one emulator's Web API, with a bearer token and the emulator's CA."""

    def __init__(self, emulator: EmulatorProcess, session: requests.Session) -> None:
        self.emulator = emulator
        self.session = session

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else f"{self.emulator.api_url}/{path}"

    def get(self, path: str, prefer: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if prefer is not None:
            headers["Prefer"] = prefer
        return self.session.get(self.url(path), headers=headers, timeout=30, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.session.post(self.url(path), json=body, timeout=30, **kwargs)

    def patch(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.session.patch(self.url(path), json=body, timeout=30, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.delete(self.url(path), timeout=30, **kwargs)

    def renew(self) -> None:
        """A new bearer token (after moving the emulator clock past the old one's expiry)."""
        self.session.headers["Authorization"] = f"Bearer {self.emulator.token()}"

    def advance(self, seconds: int) -> None:
        self.admin("POST", "/clock", {"advance_seconds": seconds})
        self.renew()

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return self.emulator.admin(method, path, body)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.session.put(self.url(path), json=body, timeout=30, **kwargs)

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        key = SCHEMA.by_name[table].primary_id
        return {row[key]: row for row in self.emulator.rows(table)}

    def config(self, **changes: Any) -> None:
        self.admin("PATCH", "/config", changes)

    def pages(self, path: str, prefer: str) -> list[dict[str, Any]]:
        """Every page of a read, following nextLinks exactly as received."""
        pages = [self.get(path, prefer).json()]
        while "@odata.nextLink" in pages[-1]:
            response = self.get(pages[-1]["@odata.nextLink"], prefer)
            assert response.status_code == 200, response.text
            pages.append(response.json())
        return pages


def created_id(response: requests.Response) -> str:
    """The GUID at the end of `OData-EntityId` (§7.1)."""
    assert response.status_code == 204, response.text
    return response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def error(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["code", "message"]
    return response.status_code, body["error"]["code"], body["error"]["message"]


@pytest.fixture
def web(fresh_emulator: EmulatorProcess, api: requests.Session) -> Api:
    return Api(fresh_emulator, api)
