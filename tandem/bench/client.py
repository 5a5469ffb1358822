"""A minimal streaming OpenAI Chat Completions client that times every chunk (aiohttp).

It sends ``stream: true`` with ``stream_options.include_usage``, so the final chunk carries the
server's token counts. The first chunk with generated text ends TTFT (a chunk carrying only the
role does not count); each later text chunk adds one inter-token latency. Output tokens come from
the usage chunk, else from the number of text chunks. Tandem's session extension
(``POST /v1/sessions``, ``session_id`` in the body, ``DELETE /v1/sessions/{id}``) is spoken too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tandem.bench.metrics import RequestRecord
from tandem.bench.sse import SseParser

if TYPE_CHECKING:
    import aiohttp


class ServerError(RuntimeError):
    """The server answered with an error status or an unreadable body."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the server: ``base_url`` ends with ``/v1`` (added when the URL has
    no path)."""

    base_url: str
    api_key: str | None = None

    @classmethod
    def of(cls, url: str, api_key: str | None = None) -> Endpoint:
        from urllib.parse import urlsplit

        url = url.rstrip("/")
        if urlsplit(url).path in ("", "/"):
            url += "/v1"
        return cls(url, api_key or None)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


async def first_model(http: aiohttp.ClientSession, endpoint: Endpoint) -> str:
    """The id of the first model ``GET /models`` lists."""
    async with http.get(f"{endpoint.base_url}/models", headers=endpoint.headers()) as response:
        body = await _json(response)
    try:
        return str(body["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise ServerError(f"GET {endpoint.base_url}/models lists no model: {str(body)[:200]}") from None


async def create_session(http: aiohttp.ClientSession, endpoint: Endpoint) -> str:
    """A new Tandem server-side session (``POST /v1/sessions``); its id."""
    async with http.post(f"{endpoint.base_url}/sessions", json={}, headers=endpoint.headers()) as response:
        body = await _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ServerError(f"POST /sessions returned no session id: {str(body)[:200]}")
    return body["id"]


async def delete_session(http: aiohttp.ClientSession, endpoint: Endpoint, session_id: str) -> None:
    async with http.delete(f"{endpoint.base_url}/sessions/{session_id}", headers=endpoint.headers()):
        pass


async def stream_chat(
    http: aiohttp.ClientSession, endpoint: Endpoint, body: dict[str, Any], record: RequestRecord
) -> None:
    """Send one streaming chat completion and fill ``record`` (timings, tokens, text, or error)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    try:
        async with http.post(
            f"{endpoint.base_url}/chat/completions", json=body, headers=endpoint.headers()
        ) as response:
            if response.status != 200:
                raise ServerError(f"HTTP {response.status}: {(await response.text())[:300]}")
            await _read_stream(response, started, record)
    except Exception as exc:  # any failure is one failed request, reported, never the run's end
        record.success, record.error = False, f"{type(exc).__name__}: {exc}"[:500]
        return
    record.latency = time.perf_counter() - started
    record.success = record.output_tokens > 0 or bool(record.text)
    if not record.success:
        record.error = "the stream ended without generated text"


async def _read_stream(response: aiohttp.ClientResponse, started: float, record: RequestRecord) -> None:
    parser, last, chunks = SseParser(), started, 0
    usage: dict[str, Any] | None = None
    parts: list[str] = []
    async for data in response.content.iter_any():
        now = time.perf_counter()
        for event in parser.feed(data):
            if event.strip() == "[DONE]":
                continue
            chunk = json.loads(event)
            if "error" in chunk:
                raise ServerError(f"error in stream: {str(chunk['error'])[:300]}")
            usage = chunk.get("usage") or usage
            text = _delta_text(chunk)
            if not text:
                continue
            if chunks == 0:
                record.ttft = now - started
            else:
                record.itl.append(now - last)
            last, chunks = now, chunks + 1
            parts.append(text)
    record.text = "".join(parts)
    record.output_tokens = int(usage.get("completion_tokens") or chunks) if usage else chunks
    if usage and usage.get("prompt_tokens") is not None:
        record.prompt_tokens = int(usage["prompt_tokens"])


def _delta_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return str(delta.get("content") or delta.get("reasoning_content") or "")


async def _json(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    if response.status != 200:
        raise ServerError(f"HTTP {response.status} from {response.url}: {text[:300]}")
    try:
        return json.loads(text)
    except ValueError:
        raise ServerError(f"not JSON from {response.url}: {text[:200]}") from None
