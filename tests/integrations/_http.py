"""A mocked HTTP transport for the real OpenAI and Anthropic SDK clients.

The SDKs send through ``httpx2`` (the next major version of httpx, which openai>=3 and
anthropic>=2 depend on); ``httpx2.MockTransport`` answers each request from the recorded response
bodies in ``fixtures/`` and records what the SDK sent, so tests can assert which requests reached
"the provider" and what they carried.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from budgeteer import AsyncLedger, Ledger
from budgeteer.testing import FakeClock

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def sse_events(name: str) -> list[dict[str, Any]]:
    """The JSON payloads of a recorded SSE stream, in order (``[DONE]`` left out)."""
    return [
        json.loads(line.removeprefix("data: "))
        for line in (FIXTURES / name).read_text().splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def json_reply(name: str) -> httpx2.Response:
    return httpx2.Response(
        200, content=(FIXTURES / name).read_bytes(), headers={"content-type": "application/json"}
    )


def sse_reply(name: str) -> httpx2.Response:
    return httpx2.Response(
        200, content=(FIXTURES / name).read_bytes(), headers={"content-type": "text/event-stream"}
    )


@dataclass
class Sent:
    """One request the SDK sent."""

    path: str
    body: dict[str, Any]


@dataclass
class Provider:
    """The mocked provider: ``reply(path, body)`` answers, ``sent`` records."""

    reply: Callable[[str, dict[str, Any]], httpx2.Response]
    sent: list[Sent] = field(default_factory=list)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content) if request.content else {}
        self.sent.append(Sent(request.url.path, body))
        return self.reply(request.url.path, body)

    def sync_http(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self.handle))

    def async_http(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))

    def model_requests(self, suffix: str) -> list[Sent]:
        return [sent for sent in self.sent if sent.path.endswith(suffix)]


def ledger_url(kind: str, tmp_path: Path) -> str:
    return "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'b.db'}"


def open_ledger(kind: str, tmp_path: Path) -> Ledger:
    return Ledger(ledger_url(kind, tmp_path), clock=FakeClock())


def open_async_ledger(kind: str, tmp_path: Path) -> AsyncLedger:
    return AsyncLedger(ledger_url(kind, tmp_path), clock=FakeClock())
