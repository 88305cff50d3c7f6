"""The storefront's window on the loyalty program, through a Shopify app proxy.

Shopify forwards `https://{shop}/apps/{prefix}/...` here, signing the query (`signature`, `timestamp`, `shop`,
`logged_in_customer_id`) with the app's secret; `verify_app_proxy_req` checks it (the previous secret too,
and a timestamp no older than 90 seconds). A buyer sees only their own balance, and asks for a reward code:
the request is queued and the worker creates the code in Shopify, deducting the points once it exists.

    GET  /proxy/loyalty           balance, tier, expiry, the latest reward code, whether a reward is affordable
    POST /proxy/loyalty/reward    ask for a reward code (202 queued, 409 when the balance does not cover it)
"""

from __future__ import annotations

from typing import Any

from shopify_app import verify_app_proxy_req
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector.clock import Clock, SystemClock
from connector.loyalty_admin import LoyaltyAdminError, NotEnoughPoints, ask_reward, buyer_loyalty
from connector.settings import Settings
from loyalty.rules import LoyaltyRules


def proxy_routes(engine: Engine, settings: Settings, clock: Clock | None = None) -> list[Route]:
    clock = clock or SystemClock()

    def verified(request: Request) -> tuple[str, str] | Response:
        if not settings.shopify_api_secret:
            return JSONResponse({"error": "the app proxy is not configured (SHOPIFY_API_SECRET)"}, status_code=503)
        config: Any = {"client_secret": settings.shopify_api_secret}
        if settings.shopify_api_secret_previous:
            config["old_client_secret"] = settings.shopify_api_secret_previous
        result = verify_app_proxy_req({"method": request.method, "url": str(request.url),
                                       "headers": dict(request.headers), "body": ""}, config)
        if not result.ok or not result.shop:
            return JSONResponse({"error": "the request is not signed by Shopify"}, status_code=401)
        if not result.logged_in_customer_id:
            return JSONResponse({"error": "log in to your account to see your points"}, status_code=403)
        return f"{result.shop}.myshopify.com", str(result.logged_in_customer_id)

    async def balance(request: Request) -> Response:
        who = verified(request)
        if isinstance(who, Response):
            return who
        shop, customer_id = who
        try:
            found = await run_in_threadpool(buyer_loyalty, engine, shop, customer_id, now=clock.now())
        except LoyaltyAdminError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        state, rules = found.view.state, LoyaltyRules.from_dict(found.shop.loyalty_rules)
        return JSONResponse({
            "points": state.balance, "tier": state.tier.name,
            "next_tier": state.next_tier.name if state.next_tier else None,
            "points_to_next_tier": state.points_to_next_tier,
            "points_expire_at": state.expires_at.date().isoformat() if state.expires_at else None,
            "reward_code": found.view.reward_code, "reward_points": rules.reward_every_points,
            "reward_value": str(rules.reward_value), "currency": found.shop.currency,
            "can_redeem": state.balance >= rules.reward_every_points,
        })

    async def reward(request: Request) -> Response:
        who = verified(request)
        if isinstance(who, Response):
            return who
        shop, customer_id = who
        try:
            asked = await run_in_threadpool(ask_reward, engine, shop, customer_id, source="app_proxy",
                                            now=clock.now())
        except NotEnoughPoints as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except LoyaltyAdminError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"status": asked.status, "points": asked.points, "value": str(asked.value),
                             "note": "your code is being created; it appears here within a minute"},
                            status_code=202)

    return [Route("/proxy/loyalty", balance, methods=["GET"]),
            Route("/proxy/loyalty/reward", reward, methods=["POST"])]
