"""HTTP routes for server-side sessions, the OpenAI endpoint's documented extension.

``POST /v1/sessions`` (body ``{"system_prompt": ..., "ttl_seconds": ...}``, both optional)
creates a session; ``GET /v1/sessions/{id}`` returns it with its history (images as
``{"type": "image_id"}`` parts); ``DELETE /v1/sessions/{id}`` deletes it. A chat completion
with ``"session_id"`` in its body (or an ``X-Tandem-Session`` header) then sends only the new
user turn and the gateway keeps the history, as ``GatewayService.Chat`` does. Every route acts
for the caller's tenant (bound by the listener's auth middleware): another tenant's session is
404, exactly like an unknown one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.messages import ImageRef, Message
from gateway.openai_request import InvalidRequest, parse_json
from gateway.service import Gateway
from gateway.sessions import SessionState
from tandem.serving.auth import current_tenant


def _part(part: object) -> dict[str, str]:
    if isinstance(part, ImageRef):
        return {"type": "image_id", "image_id": part.image_id}
    return {"type": "text", "text": str(part)}


def _content(message: Message) -> list[dict[str, str]]:
    return [_part(p) for p in message.parts]


def session_json(state: SessionState) -> dict[str, Any]:
    """A session as the HTTP API shows it (times in seconds since the epoch, as OpenAI does)."""
    return {
        "id": state.session_id,
        "object": "session",
        "created_at": state.created_at_ms // 1000,
        "updated_at": state.updated_at_ms // 1000,
        "ttl_seconds": state.ttl_seconds,
        "messages": [{"role": m.role, "content": _content(m)} for m in state.messages],
    }


async def _options(request: web.Request) -> tuple[str, int]:
    raw = await request.read()
    body = await parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    prompt = body.get("system_prompt") or ""
    ttl = body.get("ttl_seconds") or 0
    if not isinstance(prompt, str):
        raise InvalidRequest("'system_prompt' must be a string", "system_prompt")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl < 2**32:
        raise InvalidRequest("'ttl_seconds' must be a non-negative integer", "ttl_seconds")
    return prompt, ttl


class SessionRoutes:
    """The three session routes over the gateway's domain object."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/sessions", self.create),
            web.get("/v1/sessions/{session_id}", self.get),
            web.delete("/v1/sessions/{session_id}", self.delete),
        ]

    async def create(self, request: web.Request) -> web.Response:
        prompt, ttl = await _options(request)
        state = await self.gateway.create_session(prompt, ttl, current_tenant())
        return web.json_response(session_json(state))

    async def get(self, request: web.Request) -> web.Response:
        state = await self.gateway.get_session(request.match_info["session_id"], current_tenant())
        return web.json_response(session_json(state))

    async def delete(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        await self.gateway.delete_session(session_id, current_tenant())
        return web.json_response({"id": session_id, "object": "session.deleted", "deleted": True})
