"""The ASGI app: Shopify webhooks in, health and metrics out, the loyalty app proxy for the storefront."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from connector.clock import Clock
from connector.settings import Settings
from webhooks.app_home import app_home_routes
from webhooks.brevo import brevo_routes
from webhooks.intake import Intake
from webhooks.proxy import proxy_routes

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

WEBHOOK_PATH = "/webhooks/shopify"


class ConnectorApp:
    """`POST /webhooks/shopify` is served here directly: it is the hot path (thousands a second in a sale) and
    needs no framework objects per delivery. Every other request goes to the Starlette app."""

    def __init__(self, intake: Intake, other: Starlette) -> None:
        self.intake, self.other = intake, other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK_PATH:
            await self.other(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _respond(send, 405, "use POST", extra=[(b"allow", b"POST")])
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        limit = self.intake.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _respond(send, 413, f"body larger than {limit} bytes")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender went away before the body arrived: nothing to store
            body += message.get("body", b"")
            if len(body) > limit:
                await _respond(send, 413, f"body larger than {limit} bytes")
                return
            if not message.get("more_body", False):
                break
        result = await self.intake.accept_async(bytes(body), headers.get)
        await _respond(send, result.status, None if result.status == 200 else result.message)


async def _respond(send: Send, status: int, error: str | None,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = b"" if error is None else json.dumps({"error": error}).encode()
    headers = [(b"content-length", str(len(body)).encode())] + (extra or [])
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(engine: Engine, settings: Settings, *,
               on_stored: Callable[[], None] | None = None, clock: Clock | None = None) -> ConnectorApp:
    intake = Intake(engine, settings.webhook_secrets, max_body_bytes=settings.webhook_max_body_bytes,
                    on_stored=on_stored)

    async def healthz(request: Request) -> Response:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "error", "database": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        lines = []
        with engine.connect() as conn:
            for table, metric in (("inbox", "connector_inbox"), ("outbox", "connector_outbox")):
                lines.append(f"# TYPE {metric}_rows gauge")
                for status, count in conn.execute(sa.text(f"SELECT status, count(*) FROM {table} GROUP BY status")):
                    lines.append(f'{metric}_rows{{status="{status}"}} {count}')
            lines.append("# TYPE connector_contacts_rows gauge")
            for state, count in conn.execute(sa.text("SELECT push_state, count(*) FROM contacts GROUP BY push_state")):
                lines.append(f'connector_contacts_rows{{push_state="{state}"}} {count}')
            dead = conn.execute(sa.text("SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL")).scalar_one()
            lines += ["# TYPE connector_dead_letters gauge", f"connector_dead_letters {dead}"]
            lines.append("# TYPE connector_shops gauge")
            for status, count in conn.execute(sa.text("SELECT status, count(*) FROM shops GROUP BY status")):
                lines.append(f'connector_shops{{status="{status}"}} {count}')
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return ConnectorApp(intake, Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *proxy_routes(engine, settings, clock),
        *brevo_routes(engine, settings),
        *app_home_routes(engine, settings),
    ]))
