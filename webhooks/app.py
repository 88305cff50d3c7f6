"""The ASGI app: Shopify webhooks in, health and metrics out."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from connector.settings import Settings
from webhooks.intake import Intake


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise _TooLarge
    return bytes(chunks)


def create_app(engine: Engine, settings: Settings, *, on_stored: Callable[[], None] | None = None) -> Starlette:
    intake = Intake(engine, settings.webhook_secrets, max_body_bytes=settings.webhook_max_body_bytes,
                    on_stored=on_stored)

    async def shopify_webhook(request: Request) -> Response:
        try:
            body = await _read_body(request, intake.max_body_bytes)
        except _TooLarge:
            return JSONResponse({"error": f"body larger than {intake.max_body_bytes} bytes"}, status_code=413)
        result = await intake.accept_async(body, request.headers.get)
        if result.status == 200:
            return Response(status_code=200)
        return JSONResponse({"error": result.message}, status_code=result.status)

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

    return Starlette(routes=[
        Route("/webhooks/shopify", shopify_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])
