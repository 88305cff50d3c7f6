"""The app's page inside the Shopify admin (App Home): connect Brevo, choose where consent is decided, see how
the sync is doing. Server-rendered; every request is verified with `verify_app_home_req` (the session token
Shopify's App Bridge puts in the URL or the Authorization header, signed with the app's secret) and answered
with the headers Shopify requires of a page it frames (`Content-Security-Policy: frame-ancestors`).

    GET  /auth/install?shop=    the authorization-code install: to Shopify's consent screen (one-time state)
    GET  /auth/callback         Shopify's redirect: signature, shop and state checked, the code exchanged
    GET  /app                   the page; the first visit of a shop installs it (token exchange)
    GET  /app/patch-id-token    the bounce page that fetches a fresh session token (App Bridge)
    POST /app/brevo             save a Brevo API key, once Brevo's /account accepts it
    POST /app/consent           where consent is decided, per channel (see README, Two-way consent)
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import httpx
import sqlalchemy as sa
from shopify_app import app_home_patch_id_token, verify_app_home_req
from sqlalchemy.engine import Engine
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from connector.brevo import BrevoAuthFailed, BrevoClient, BrevoError
from connector.database import unit_of_work
from connector.install import (
    CALLBACK_PATH,
    InstallError,
    app_config,
    begin_install,
    finish_install,
    install_with_id_token,
)
from connector.models import DataExport, Shop
from connector.settings import MissingSetting, Settings
from connector.shops import ShopError, configure_shop, secret_box
from mappings.shop_config import CONSENT_SOURCES, ShopConfig
from webhooks.brevo import BREVO_PATH, brevo_webhook_token

log = logging.getLogger("connector.app_home")

PATCH_PATH = "/app/patch-id-token"


def _res(result: Any) -> Response:
    """shopifyapp's suggested response (a redirect to the bounce page, a 401...) as a Starlette one."""
    res = result.response
    return Response(content=res.body or "", status_code=res.status, headers=dict(res.headers or {}))


def app_home_routes(engine: Engine, settings: Settings, *, http: httpx.Client | None = None) -> list[Route]:
    def request_input(request: Request, body: str = "") -> Any:
        return {"method": request.method, "url": str(request.url), "headers": dict(request.headers), "body": body}

    def verify(request: Request, body: str = "") -> Any:
        try:
            config = app_config(settings)
        except MissingSetting as exc:
            return JSONResponse({"error": f"the app is not configured: {exc}"}, status_code=503)
        return verify_app_home_req(request_input(request, body), config, PATCH_PATH)

    async def home(request: Request) -> Response:
        result = verify(request)
        if isinstance(result, Response):
            return result
        if not result.ok:
            return _res(result)
        domain = f"{result.shop}.myshopify.com"
        frame_headers = dict(result.response.headers or {})
        try:
            shop_id = await run_in_threadpool(_installed, domain, result.id_token)
        except InstallError as exc:
            log.warning("%s", exc)
            return HTMLResponse(_page("Installation failed", f"<p class=error>{html.escape(str(exc))}</p>"
                                      "<p>Reload the page to try again.</p>"), status_code=502, headers=frame_headers)
        page = await run_in_threadpool(_render, shop_id, str(result.id_token.token))
        return HTMLResponse(page, headers=frame_headers)

    def _installed(domain: str, id_token: Any) -> int:
        """The shop's id; installed (token exchange) when it has no token, or uninstalled the app before."""
        with unit_of_work(engine) as session:
            shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
            refused = shop is not None and (shop.paused_reason or "").startswith("Shopify refused")
            if shop is not None and shop.access_token_enc and shop.status != "uninstalled" and not refused:
                assert shop.id is not None
                return shop.id
        return install_with_id_token(engine, settings, id_token, http=http)

    async def patch(request: Request) -> Response:
        try:
            config = app_config(settings)
        except MissingSetting as exc:
            return JSONResponse({"error": f"the app is not configured: {exc}"}, status_code=503)
        return _res(app_home_patch_id_token(request_input(request), config))

    async def form(request: Request) -> tuple[Any, dict[str, str]] | Response:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            # The page's forms post through fetch(), to which App Bridge adds the session token.
            return JSONResponse({"error": "missing session token (Authorization: Bearer)"}, status_code=401)
        raw = (await request.body()).decode("utf-8", errors="replace")
        result = verify(request, raw)
        if isinstance(result, Response):
            return result
        if not result.ok:
            return _res(result)
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(raw or "{}")
            except ValueError:
                return JSONResponse({"error": "the body is not JSON"}, status_code=400)
            fields = {str(k): str(v) for k, v in data.items()} if isinstance(data, Mapping) else {}
        else:
            fields = {k: v[0] for k, v in parse_qs(raw).items()}
        return result, fields

    async def save_brevo(request: Request) -> Response:
        checked = await form(request)
        if isinstance(checked, Response):
            return checked
        result, fields = checked
        key = fields.get("brevo_api_key", "").strip()
        if not key:
            return JSONResponse({"error": "paste the Brevo API key (Brevo: SMTP & API, API keys)"}, status_code=400)
        answer = await run_in_threadpool(_connect_brevo, f"{result.shop}.myshopify.com", key)
        return JSONResponse(answer, status_code=200 if answer.get("ok") else answer.pop("status", 400),
                            headers=dict(result.response.headers or {}))

    def _connect_brevo(domain: str, key: str) -> dict[str, Any]:
        client = BrevoClient(key, base_url=settings.brevo_api_url)
        try:
            account = client.get_account().body
        except BrevoAuthFailed:
            return {"ok": False, "status": 400,
                    "error": "Brevo refused this API key: check it in Brevo (SMTP & API, API keys); nothing was saved"}
        except BrevoError as exc:
            return {"ok": False, "status": 503, "error": f"Brevo could not be reached ({exc}); nothing was saved, "
                                                         "try again in a moment"}
        finally:
            client.close()
        with unit_of_work(engine) as session:
            shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
            if shop is None:
                return {"ok": False, "status": 404, "error": "this shop is not installed"}
            shop.brevo_api_key_enc = secret_box(settings).seal(key)
            shop.brevo_ready_at = shop.setup_due_at = None  # the account gets our attributes and list
            shop.setup_error = None
            if shop.status == "paused" and (shop.paused_reason or "").startswith("Brevo"):
                shop.status, shop.paused_reason = "active", None
        company = getattr(account, "company_name", None) or (account.get("companyName")
                                                             if isinstance(account, dict) else None)
        return {"ok": True, "message": f"Brevo connected{f' ({company})' if company else ''}: the sync starts"}

    async def save_consent(request: Request) -> Response:
        checked = await form(request)
        if isinstance(checked, Response):
            return checked
        result, fields = checked
        wanted = {c: fields[c] for c in ("email", "sms") if c in fields}
        if any(v not in CONSENT_SOURCES for v in wanted.values()):
            return JSONResponse({"error": f"each channel is one of {', '.join(CONSENT_SOURCES)}"}, status_code=400)
        domain = f"{result.shop}.myshopify.com"

        def store() -> dict[str, Any]:
            with unit_of_work(engine) as session:
                current = session.execute(sa.select(col(Shop.config)).where(col(Shop.domain) == domain)).scalar()
            config = dict(current or {})
            config["consent"] = {**config.get("consent", {}), **wanted}
            return configure_shop(engine, domain, _toml(config))

        try:
            stored = await run_in_threadpool(store)
        except ShopError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"ok": True, "consent": stored.get("consent", {})},
                            headers=dict(result.response.headers or {}))

    def _render(shop_id: int, id_token: str) -> str:
        with engine.connect() as conn:
            shop = conn.execute(sa.select(Shop).where(col(Shop.id) == shop_id)).one()
            figures = conn.execute(sa.text("""
                SELECT
                  (SELECT max(received_at) FROM inbox WHERE shop_domain = :d AND source = 'webhook'),
                  (SELECT count(*) FROM inbox WHERE shop_domain = :d AND status = 'pending'),
                  (SELECT count(*) FROM outbox WHERE shop_id = :s AND status = 'pending'),
                  (SELECT count(*) FROM contacts WHERE shop_id = :s AND (dirty OR push_state = 'pending')),
                  (SELECT count(*) FROM dead_letters WHERE (shop_id = :s OR shop_domain = :d)
                     AND resolved_at IS NULL),
                  (SELECT count(*) FROM contacts WHERE shop_id = :s AND sent IS NOT NULL)
            """), {"d": shop.domain, "s": shop_id}).one()
            exports = conn.execute(sa.select(col(DataExport.id), col(DataExport.request_key),
                                             col(DataExport.created_at)).where(col(DataExport.shop_id) == shop_id)
                                   .order_by(col(DataExport.id).desc()).limit(20)).all()
        return _page(shop.domain, _status(shop, figures) + _brevo_form(shop) + _consent_form(shop)
                     + _exports(exports), api_key=settings.shopify_api_key or "", id_token=id_token)

    def _status(shop: Any, figures: Any) -> str:
        last_webhook, inbox, outbox, contacts, dead, delivered = figures
        if shop.status == "paused":
            state = f"<p class=error>Paused: {html.escape(shop.paused_reason or '')}</p>"
        elif not shop.brevo_api_key_enc:
            state = "<p class=warn>Waiting for a Brevo API key (below).</p>"
        elif shop.setup_error:
            state = f"<p class=warn>Brevo set-up: {html.escape(shop.setup_error)}</p>"
        else:
            state = "<p class=ok>Syncing.</p>"
        rows = [("Last webhook", last_webhook or "none yet"), ("Last push to Brevo", shop.last_push_at or "none yet"),
                ("Backlog", f"{inbox} deliveries, {contacts} contacts, {outbox} events"),
                ("Contacts in Brevo", delivered), ("Dead letters", dead)]
        table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<section><h2>Sync status</h2>{state}<table>{table}</table></section>"

    def _brevo_form(shop: Any) -> str:
        connected = "Connected. Paste another key to change it." if shop.brevo_api_key_enc else "Not connected."
        return ("<section><h2>Brevo</h2>"
                f"<p>{connected}</p>"
                "<form data-action='/app/brevo'><label>Brevo API key "
                "<input name=brevo_api_key type=password autocomplete=off required></label>"
                "<button type=submit>Connect</button><output></output></form></section>")

    def _consent_form(shop: Any) -> str:
        config = ShopConfig.from_dict(shop.config)
        selects = ""
        for channel in ("email", "sms"):
            current = config.consent.get(channel, "both")
            options = "".join(f"<option value={v}{' selected' if v == current else ''}>"
                              f"{'Brevo and Shopify' if v == 'both' else 'Shopify only'}</option>"
                              for v in CONSENT_SOURCES)
            selects += f"<label>{channel} opt-outs count in <select name={channel}>{options}</select></label>"
        address = ""
        if settings.shopify_api_secret and shop.id is not None:
            url = f"{settings.public_url or ''}{BREVO_PATH}/{brevo_webhook_token(shop.id, settings.shopify_api_secret)}"
            address = (f"<p>Brevo webhook for unsubscribes, hard bounces, spam complaints and SMS STOPs: "
                       f"<code>{html.escape(url)}</code></p>")
        return (f"<section><h2>Consent</h2>{address}<form data-action='/app/consent'>{selects}"
                "<button type=submit>Save</button><output></output></form></section>")

    def _exports(exports: Any) -> str:
        if not exports:
            return "<section><h2>Customer data requests</h2><p>None.</p></section>"
        items = "".join(f"<li>Export {row.id} (request {html.escape(row.request_key)}, {row.created_at}): "
                        f"<code>connector shops exports --shop … --id {row.id}</code></li>" for row in exports)
        return f"<section><h2>Customer data requests</h2><ul>{items}</ul></section>"

    async def install(request: Request) -> Response:
        """The authorization-code install: to Shopify's consent screen, with a one-time state."""
        try:
            location = await run_in_threadpool(begin_install, engine, settings, request.query_params.get("shop", ""))
        except MissingSetting as exc:
            return JSONResponse({"error": f"the app is not configured: {exc}"}, status_code=503)
        except ShopError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return RedirectResponse(location, status_code=302)

    async def callback(request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items()}
        try:
            domain = await run_in_threadpool(partial(finish_install, engine, settings, params, http=http))
        except MissingSetting as exc:
            return JSONResponse({"error": f"the app is not configured: {exc}"}, status_code=503)
        except InstallError as exc:
            log.warning("install refused: %s", exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return RedirectResponse(f"https://{domain}/admin/apps/{settings.shopify_api_key}", status_code=302)

    return [Route("/auth/install", install, methods=["GET"]), Route(CALLBACK_PATH, callback, methods=["GET"]),
            Route("/app", home, methods=["GET"]), Route(PATCH_PATH, patch, methods=["GET"]),
            Route("/app/brevo", save_brevo, methods=["POST"]), Route("/app/consent", save_consent, methods=["POST"])]


def _toml(config: Mapping[str, Any]) -> str:
    """A stored configuration back in TOML, for `configure_shop` (which validates it whole)."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{json.dumps(str(key))} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _page(title: str, body: str, *, api_key: str = "", id_token: str = "") -> str:
    """The page. Its forms post through fetch() with the session token: App Bridge's fresh one inside the Shopify
    admin, else the one the page was opened with (valid for a minute)."""
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>
<meta name=shopify-api-key content="{html.escape(api_key)}">
<meta name=connector-id-token content="{html.escape(id_token)}">
<script src="https://cdn.shopify.com/shopifycloud/app-bridge.js"></script>
<style>body{{font:14px system-ui,sans-serif;margin:1.5rem;max-width:48rem}}section{{margin-bottom:1.5rem}}
th{{text-align:left;padding-right:1rem}}.error{{color:#b00020}}.warn{{color:#8a6d00}}.ok{{color:#0a7d32}}
label{{display:block;margin:.4rem 0}}output{{margin-left:.6rem}}</style></head>
<body><h1>Brevo connector: {html.escape(title)}</h1>{body}
<script>
for (const form of document.querySelectorAll("form[data-action]")) {{
  form.addEventListener("submit", async (event) => {{
    event.preventDefault();
    const out = form.querySelector("output");
    out.textContent = "…";
    const token = window.shopify && shopify.idToken ? await shopify.idToken()
      : document.querySelector("meta[name=connector-id-token]").content;
    const response = await fetch(form.dataset.action, {{method: "POST",
      headers: {{"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer " + token}},
      body: new URLSearchParams(new FormData(form))}});
    const answer = await response.json();
    out.textContent = answer.message || answer.error || (answer.ok ? "Saved" : "Refused");
    out.className = answer.ok ? "ok" : "error";
  }});
}}
</script></body></html>"""
