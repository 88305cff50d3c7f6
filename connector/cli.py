"""The `connector` command: run, web, worker, demo, db upgrade, shops, dead-letters."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine

from connector.database import make_engine, upgrade
from connector.runtime import tune_gc
from connector.settings import MissingSetting, Settings

if TYPE_CHECKING:
    from connector.models import Shop

app = typer.Typer(help="Shopify -> Brevo connector.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
shops_app = typer.Typer(help="The shops this connector syncs.", no_args_is_help=True)
dead_app = typer.Typer(help="What could not be applied or delivered, with the reason.", no_args_is_help=True)
contacts_app = typer.Typer(help="Buyers as Brevo sees them.", no_args_is_help=True)
loyalty_app = typer.Typer(help="The loyalty program: rules, balances, adjustments, reward codes.",
                          no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(contacts_app, name="contacts")
app.add_typer(shops_app, name="shops")
secrets_app = typer.Typer(help="The encryption of stored tokens and keys.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")
app.add_typer(dead_app, name="dead-letters")
app.add_typer(loyalty_app, name="loyalty")

console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, whatever the width
    return typer.Exit(code)


def _read_text(file: str) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from None


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic validation of a malformed value
        raise _fail(f"invalid configuration: {exc}") from None


def _engine(settings: Settings) -> Engine:
    """Open the database; SQLite is migrated implicitly, PostgreSQL needs `connector db upgrade`."""
    engine = make_engine(settings.database_url)
    if engine.dialect.name == "sqlite":
        upgrade(settings.database_url)
    else:
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        from connector.database import alembic_config

        head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current != head:
            raise _fail("the database schema is not up to date: run `connector db upgrade`")
    return engine


def _require_runtime(settings: Settings, *, web: bool) -> None:
    try:
        if web:
            settings.require("SHOPIFY_API_SECRET")
        if settings.shopify_shop or settings.shopify_access_token:
            settings.require("SHOPIFY_SHOP", "SHOPIFY_ACCESS_TOKEN", "BREVO_API_KEY")
        else:
            settings.require("CONNECTOR_SECRET_KEY")
    except MissingSetting as exc:
        raise _fail(f"{exc}; see README, Configuration") from None


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or update the database schema."""
    settings = _settings()
    upgrade(settings.database_url)
    console.print("database schema is up to date")


@app.command()
def web() -> None:
    """Serve the webhook endpoint, /healthz and /metrics."""
    import uvicorn

    from connector.shops import ensure_single_store_shop
    from webhooks.app import create_app

    settings = _settings()
    _require_runtime(settings, web=True)
    engine = _engine(settings)
    ensure_single_store_shop(engine, settings)
    uvicorn.run(create_app(engine, settings), host=settings.host, port=settings.port, log_level="info")


@app.command()
def worker(until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit when no work is left.")] = False
           ) -> None:
    """Apply webhooks, rebuild profiles and deliver to Brevo."""
    from connector.shops import ensure_single_store_shop
    from sync.worker import Worker

    settings = _settings()
    _require_runtime(settings, web=False)
    engine = _engine(settings)
    ensure_single_store_shop(engine, settings)
    stats = Worker(engine, settings).run(until_idle=until_idle)
    console.print(f"applied {stats.applied}, quarantined {stats.failed}, contacts pushed {stats.contacts_pushed}, "
                  f"events pushed {stats.events_pushed}")


def _check_subscriptions_on_start(engine: Engine, settings: Settings) -> None:
    """Custom-app mode with a public address: the shop's missing webhook subscriptions are created at start
    (reported, never fatal: Shopify may be unreachable for a moment; `connector shops check` says more)."""
    from sqlalchemy.orm import Session
    from sqlmodel import col

    from connector.models import Shop
    from connector.shopify import ShopifyError
    from connector.shops import shopify_client
    from connector.subscriptions import WEBHOOK_PATH, check_subscriptions

    with Session(engine) as session:
        shop = session.execute(sa.select(Shop).where(col(Shop.domain) == settings.shopify_shop)).scalar_one()
    client = shopify_client(shop, settings, engine=engine)
    if client is None:
        return
    try:
        report = check_subscriptions(client, f"{settings.public_url}{WEBHOOK_PATH}")
    except ShopifyError as exc:
        err.print(f"webhook subscriptions of {shop.domain} not checked: {exc}", highlight=False)
        return
    err.print(f"webhook subscriptions of {shop.domain}: {len(report.present)} in place, "
              f"{len(report.created)} created" + (f", {len(report.failed)} refused: {report.failed}"
                                                   if report.failed else ""), highlight=False)


@app.command()
def run() -> None:
    """Web and one worker in one process: the embedded default."""
    import uvicorn

    from connector.shops import ensure_single_store_shop
    from sync.worker import Worker
    from webhooks.app import create_app

    settings = _settings()
    _require_runtime(settings, web=True)
    engine = _engine(settings)
    ensure_single_store_shop(engine, settings)
    if settings.single_store_mode and settings.public_url:
        threading.Thread(target=_check_subscriptions_on_start, args=(engine, settings), name="subscriptions",
                         daemon=True).start()
    the_worker = Worker(engine, settings)
    stop = threading.Event()
    thread = threading.Thread(target=the_worker.run, kwargs={"stop": stop}, name="worker", daemon=True)
    thread.start()
    try:
        uvicorn.run(create_app(engine, settings, on_stored=the_worker.wake.set), host=settings.host,
                    port=settings.port, log_level="info")
    finally:
        stop.set()
        the_worker.wake.set()
        thread.join(timeout=10)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Registered customers in the simulated store.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the simulated store.")] = 7,
    database_url: Annotated[str | None, typer.Option(help="Database (default: a fresh temporary SQLite file).")]
    = None,
) -> None:
    """Seed a simulated store, replay it as signed webhooks into the real endpoint, sync to a simulated Brevo."""
    from connector.demo import run_demo

    summary = run_demo(customers=customers, seed=seed, database_url=database_url, console=console)
    if summary.dead_letters:
        console.print(f"[yellow]{summary.dead_letters} dead letters: see the table above[/]")


@shops_app.command("add")
def shops_add(
    domain: Annotated[str, typer.Option(help="my-store.myshopify.com")],
    brevo_api_key: Annotated[str, typer.Option(envvar="BREVO_API_KEY", help="The shop's Brevo API key.")],
    access_token: Annotated[str | None, typer.Option(envvar="SHOPIFY_ACCESS_TOKEN",
                                                     help="The custom app's Admin API access token.")] = None,
    client_id: Annotated[str | None, typer.Option(help="Or the custom app's client id (with --client-secret): "
                                                       "tokens are exchanged and renewed by the connector.")] = None,
    client_secret: Annotated[str | None, typer.Option(help="The custom app's client secret.")] = None,
) -> None:
    """Register a shop (a merchant's own custom app) with its tokens encrypted at rest."""
    from connector.install import InstallError, add_by_client_credentials
    from connector.settings import is_placeholder
    from connector.shops import ShopError, add_shop

    settings = _settings()
    if is_placeholder(brevo_api_key):
        raise _fail("--brevo-api-key is not set or still holds a placeholder value")
    by_credentials = client_id is not None or client_secret is not None
    if by_credentials and (is_placeholder(client_id) or is_placeholder(client_secret)):
        raise _fail("--client-id and --client-secret go together, and neither may be a placeholder")
    if not by_credentials and is_placeholder(access_token):
        raise _fail("--access-token (or --client-id with --client-secret) is not set or still holds a placeholder "
                    "value")
    try:
        if by_credentials:
            assert client_id is not None and client_secret is not None
            shop_id = add_by_client_credentials(_engine(settings), settings, domain=domain, client_id=client_id,
                                                client_secret=client_secret, brevo_api_key=brevo_api_key)
        else:
            assert access_token is not None
            shop_id = add_shop(_engine(settings), settings, domain=domain, access_token=access_token,
                               brevo_api_key=brevo_api_key)
    except (MissingSetting, ShopError, InstallError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"shop {domain} registered (id {shop_id})")


@shops_app.command("configure")
def shops_configure(
    shop: Annotated[str, typer.Option(help="my-store.myshopify.com")],
    file: Annotated[str, typer.Option("--file", help="The mapping configuration (TOML); see README, Mapping.")],
) -> None:
    """Rename or switch off attributes and events, set lifecycle delays and segment lists, for one shop."""
    from connector.shops import ShopError, configure_shop
    from mappings.shop_config import ConfigError

    settings = _settings()
    text = _read_text(file)
    try:
        stored = configure_shop(_engine(settings), shop, text)
    except ConfigError as exc:
        raise _fail(f"{file}: {exc} (the previous configuration stays in force)") from None
    except ShopError as exc:
        raise _fail(str(exc)) from None
    console.print(f"configuration of {shop} saved: {json.dumps(stored) if stored else 'all defaults'}")


@contacts_app.command("explain")
def contacts_explain(
    email: Annotated[str, typer.Argument(help="The buyer's email address (or phone in E.164).")],
    shop: Annotated[str, typer.Option(help="my-store.myshopify.com")],
) -> None:
    """The buyer's profile, how each figure was computed, what Brevo last received and which events were sent."""
    from connector.explain import ExplainError, explain_contact

    settings = _settings()
    try:
        explain_contact(_engine(settings), shop, email, console)
    except ExplainError as exc:
        raise _fail(str(exc)) from None


@shops_app.command("list")
def shops_list() -> None:
    """Shops, their state and backlog."""
    settings = _settings()
    engine = _engine(settings)
    table = Table("id", "domain", "status", "backlog", "last webhook", "last push", "note")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            SELECT s.id, s.domain, s.status, s.paused_reason, s.setup_error, s.last_push_at,
              (SELECT count(*) FROM inbox i WHERE i.shop_domain = s.domain AND i.status = 'pending') AS inbox,
              (SELECT count(*) FROM outbox o WHERE o.shop_id = s.id AND o.status = 'pending') AS outbox,
              (SELECT max(i.received_at) FROM inbox i WHERE i.shop_domain = s.domain) AS last_webhook
            FROM shops s ORDER BY s.id""")).all()
    for r in rows:
        table.add_row(str(r.id), r.domain, r.status, f"{r.inbox} in, {r.outbox} out", str(r.last_webhook or "-"),
                      str(r.last_push_at or "-"), r.paused_reason or r.setup_error or "")
    console.print(table)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Seal every stored token and key again with CONNECTOR_SECRET_KEY (the old key in
    CONNECTOR_SECRET_KEY_PREVIOUS); afterwards the previous key can be dropped."""
    from connector.shops import rotate_secrets

    settings = _settings()
    settings.require("CONNECTOR_SECRET_KEY")
    resealed, unreadable = rotate_secrets(_engine(settings), settings)
    console.print(f"{resealed} stored secrets sealed with the current key")
    if unreadable:
        raise _fail(f"secrets of {', '.join(unreadable)} open with neither CONNECTOR_SECRET_KEY nor "
                    "CONNECTOR_SECRET_KEY_PREVIOUS: left as they are (register those shops again)", code=1)


@shops_app.command("check")
def shops_check(
    shop: Annotated[str | None, typer.Option(help="Only this shop (default: every active shop with a token).")]
    = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where Shopify should deliver (default: "
                                                         "CONNECTOR_PUBLIC_URL + /webhooks/shopify).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what is missing; create nothing.")] = False,
) -> None:
    """Check each shop's webhook subscriptions (a merchant's own custom app) and create the missing ones."""
    from sqlalchemy.orm import Session
    from sqlmodel import col

    from connector.models import Shop
    from connector.shopify import ShopifyError
    from connector.shops import ShopError, normalise_domain, shopify_client
    from connector.subscriptions import PRIVACY_TOPICS, WEBHOOK_PATH, check_subscriptions

    settings = _settings()
    address = webhook_url or (f"{settings.public_url}{WEBHOOK_PATH}" if settings.public_url else None)
    if not address:
        raise _fail("CONNECTOR_PUBLIC_URL is not set (or give --webhook-url): Shopify needs the address to deliver to")
    if not address.startswith("https://"):
        raise _fail(f"{address}: Shopify delivers webhooks to https addresses only")
    engine = _engine(settings)
    from connector.shops import ensure_single_store_shop

    ensure_single_store_shop(engine, settings)
    with Session(engine) as session:
        query = sa.select(Shop).where(col(Shop.status) == "active").order_by(col(Shop.id))
        if shop:
            try:
                query = sa.select(Shop).where(col(Shop.domain) == normalise_domain(shop))
            except ShopError as exc:
                raise _fail(str(exc)) from None
        shops = session.execute(query).scalars().all()
    if shop and not shops:
        raise _fail(f"no shop {shop}: add it with `connector shops add` first")
    table = Table("shop", "subscribed", "created", "missing", "note")
    incomplete = False
    for found in shops:
        client = shopify_client(found, settings, engine=engine)
        if client is None:
            table.add_row(found.domain, "-", "-", "-", "no Shopify access token")
            incomplete = True
            continue
        try:
            report = check_subscriptions(client, address, repair=not dry_run)
        except ShopifyError as exc:
            table.add_row(found.domain, "-", "-", "-", f"Shopify: {exc}")
            incomplete = True
            continue
        notes = [f"{t}: {reason}" for t, reason in report.failed]
        notes += [f"{t} also goes to {uri}" for t, uri in report.elsewhere]
        table.add_row(found.domain, str(len(report.present)), ", ".join(report.created) or "-",
                      ", ".join(report.missing + [t for t, _ in report.failed]) or "-", "; ".join(notes))
        incomplete |= not report.complete
    console.print(table)
    console.print(f"privacy topics ({', '.join(PRIVACY_TOPICS)}) cannot be subscribed through the API: declare them "
                  "in the app's configuration (shopify.app.toml, compliance_topics)", highlight=False)
    if incomplete:
        raise _fail("some shops are missing webhook subscriptions (see above)", code=1)


@shops_app.command("brevo-webhook")
def shops_brevo_webhook(shop: Annotated[str, typer.Option(help="my-store.myshopify.com")]) -> None:
    """The address to give Brevo (Settings, Webhooks: unsubscribed, hard bounce, spam; SMS STOP) so that its
    opt-outs reach the shop's consent in Shopify (see README, Two-way consent)."""
    from webhooks.brevo import BREVO_PATH, brevo_webhook_token

    engine, found, settings = _known_shop(shop)
    settings.require("SHOPIFY_API_SECRET")
    assert settings.shopify_api_secret is not None and found.id is not None
    base = settings.public_url or "https://<CONNECTOR_PUBLIC_URL>"
    print(f"{base}{BREVO_PATH}/{brevo_webhook_token(found.id, settings.shopify_api_secret)}")


@shops_app.command("exports")
def shops_exports(
    shop: Annotated[str, typer.Option(help="my-store.myshopify.com")],
    export_id: Annotated[int | None, typer.Option("--id", help="Print this export (JSON) instead of the list.")] = None,
    out: Annotated[str | None, typer.Option(help="With --id: write the export to this file.")] = None,
) -> None:
    """The customers' data exports Shopify asked for (customers/data_request), for the merchant to hand over."""
    from sqlmodel import col

    from connector.models import DataExport

    engine, found, _ = _known_shop(shop)
    with engine.connect() as conn:
        where = [col(DataExport.shop_id) == found.id]
        if export_id is not None:
            where.append(col(DataExport.id) == export_id)
        rows = conn.execute(sa.select(col(DataExport.id), col(DataExport.request_key), col(DataExport.customer_id),
                                      col(DataExport.created_at), col(DataExport.body)).where(*where)
                            .order_by(col(DataExport.id))).all()
    if export_id is None:
        table = Table("id", "request", "customer", "exported at")
        for r in rows:
            table.add_row(str(r.id), r.request_key, str(r.customer_id or "-"), str(r.created_at))
        console.print(table if rows else f"no data requests for {found.domain}")
        return
    if not rows:
        raise _fail(f"no export {export_id} for {found.domain}: see `connector shops exports --shop {found.domain}`")
    if out:
        Path(out).write_text(rows[0].body, encoding="utf-8")
        console.print(f"export {export_id} written to {out}")
    else:
        print(rows[0].body)


@dead_app.command("list")
def dead_letters_list(
    shop: Annotated[str | None, typer.Option(help="Only this shop's domain.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """What could not be applied or delivered, newest first, with the reason."""
    settings = _settings()
    engine = _engine(settings)
    query = "SELECT id, shop_domain, source, reference, topic, reason, created_at FROM dead_letters " \
            "WHERE resolved_at IS NULL" + (" AND shop_domain = :shop" if shop else "") + \
            " ORDER BY id DESC LIMIT :limit"
    with engine.connect() as conn:
        rows = conn.execute(sa.text(query), {"shop": shop, "limit": limit}).all()
    if as_json:
        for r in rows:
            print(json.dumps({k: str(v) if v is not None else None for k, v in r._mapping.items()}))
        return
    table = Table("id", "shop", "what", "reference", "topic", "reason", "when")
    for r in rows:
        table.add_row(str(r.id), r.shop_domain or "", r.source, r.reference, r.topic or "", r.reason,
                      str(r.created_at))
    console.print(table if rows else "no dead letters")


@dead_app.command("retry")
def dead_letters_retry(ids: Annotated[list[int], typer.Argument(help="Dead letter ids.")]) -> None:
    """Put dead letters back in the queue (after fixing their cause) and mark them resolved."""
    from connector.dead_letters import retry_dead_letters

    settings = _settings()
    count = retry_dead_letters(_engine(settings), ids)
    console.print(f"{count} re-queued")


ShopOption = Annotated[str, typer.Option(help="my-store.myshopify.com")]
BuyerArgument = Annotated[str, typer.Argument(help="The buyer: email address, phone (E.164) or customer id.")]


@loyalty_app.command("configure")
def loyalty_configure(
    shop: ShopOption,
    file: Annotated[str, typer.Option("--file", help="The loyalty rules (TOML); see README, Loyalty program.")],
) -> None:
    """Put a shop's loyalty rules in force and recompute every balance and tier under them (silently)."""
    from connector.clock import SystemClock
    from connector.loyalty_admin import LoyaltyAdminError, configure_loyalty, recompute_program
    from mappings.shop_config import ConfigError

    settings = _settings()
    text = _read_text(file)
    engine = _engine(settings)
    now = SystemClock().now()
    try:
        configure_loyalty(engine, shop, text, now=now)
        done = recompute_program(engine, shop, now=now)
    except ConfigError as exc:
        raise _fail(f"{file}: {exc} (the previous rules stay in force)") from None
    except LoyaltyAdminError as exc:
        raise _fail(str(exc)) from None
    console.print(f"loyalty rules of {shop} in force; {done.buyers} buyers recomputed in {done.seconds:.1f} s "
                  f"({done.entries} ledger corrections, {done.tiers_changed} tiers changed, no events sent)")


@loyalty_app.command("recompute")
def loyalty_recompute(shop: ShopOption) -> None:
    """Bring every buyer's ledger to what the rules grant over the full mirrored history (no events)."""
    from connector.clock import SystemClock
    from connector.loyalty_admin import LoyaltyAdminError, recompute_program

    settings = _settings()
    try:
        done = recompute_program(_engine(settings), shop, now=SystemClock().now())
    except LoyaltyAdminError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{done.buyers} buyers recomputed in {done.seconds:.1f} s: {done.entries} ledger corrections, "
                  f"{done.tiers_changed} tiers changed")


@loyalty_app.command("show")
def loyalty_show(who: BuyerArgument, shop: ShopOption) -> None:
    """A buyer's balance, tier, expiry and every ledger entry with its reason."""
    from connector.clock import SystemClock
    from connector.loyalty_admin import LoyaltyAdminError, buyer_loyalty

    settings = _settings()
    try:
        found = buyer_loyalty(_engine(settings), shop, who, now=SystemClock().now())
    except LoyaltyAdminError as exc:
        raise _fail(str(exc)) from None
    state = found.view.state
    console.print(f"[bold]{who}[/]: {state.balance} points, tier {state.tier.name}"
                  + (f", {state.points_to_next_tier} to {state.next_tier.name}" if state.next_tier else "")
                  + (f"; expire {state.expires_at.date()} if no order before" if state.expires_at else "")
                  + f"; lifetime earned {state.lifetime_earned}", highlight=False)
    table = Table("when", "points", "kind", "source key", "reason")
    for entry in found.ledger:
        table.add_row(entry.at.isoformat(timespec="seconds"), f"{entry.points:+d}", entry.kind, entry.key,
                      entry.reason)
    console.print(table)


@loyalty_app.command("adjust")
def loyalty_adjust(
    who: BuyerArgument,
    shop: ShopOption,
    points: Annotated[int, typer.Option(help="Points to add; negative to take away.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the ledger, sent with the event).")],
) -> None:
    """Add or take away points by hand. Refused when the balance would go below zero."""
    from connector.clock import SystemClock
    from connector.loyalty_admin import LoyaltyAdminError, adjust_points

    settings = _settings()
    try:
        before, after = adjust_points(_engine(settings), shop, who, points, reason, now=SystemClock().now())
    except LoyaltyAdminError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{who}: {before} -> {after} points ({reason})")


@loyalty_app.command("reward")
def loyalty_reward(who: BuyerArgument, shop: ShopOption) -> None:
    """Ask for a reward code for a buyer; the worker creates it in Shopify, then deducts the points."""
    from connector.clock import SystemClock
    from connector.loyalty_admin import LoyaltyAdminError, ask_reward

    settings = _settings()
    try:
        reward = ask_reward(_engine(settings), shop, who, source="cli", now=SystemClock().now())
    except LoyaltyAdminError as exc:
        raise _fail(str(exc)) from None
    console.print(f"reward code {reward.code} ({reward.points} points, worth {reward.value}) {reward.status}; "
                  "the worker creates it in Shopify")


@app.command()
def backfill(shop: ShopOption,
             since: Annotated[str | None, typer.Option(help="only history created on or after this date "
                                                           "(YYYY-MM-DD)")] = None,
             resources: Annotated[str, typer.Option(help="comma-separated: customers, products, orders, "
                                                         "checkouts")] = "customers,products,orders,checkouts",
             restart: Annotated[bool, typer.Option(help="start over instead of resuming an unfinished run")] = False,
             ) -> None:
    """Read the shop's history from Shopify with bulk queries and stage it for the workers, which apply it as
    history: contacts get their totals, no automation fires. Resumable: run it again after a failure or a kill."""
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from connector.shops import shopify_client
    from sync.backfill import BackfillError, run_backfill
    from sync.backfill import Progress as Step

    try:
        moment = datetime.fromisoformat(since).replace(tzinfo=UTC) if since else None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    engine, found, settings = _known_shop(shop)
    domain = found.domain
    client = shopify_client(found, settings, engine=engine)
    if client is None:
        raise _fail(f"no Shopify access token for {domain}")
    with Progress(TextColumn("{task.description:<10}"), TextColumn("{task.fields[step]:<8}"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  disable=not console.is_terminal) as bars:
        tasks: dict[str, TaskID] = {}

        def show(step: Step) -> None:
            if step.resource not in tasks:
                tasks[step.resource] = bars.add_task(step.resource, total=None, step=step.step)
            bars.update(tasks[step.resource], completed=step.done, total=step.total or None, step=step.step)

        try:
            results = run_backfill(engine, client, domain, resources=[r.strip() for r in resources.split(",")],
                                   since=moment, restart=restart, progress=show)
        except BackfillError as exc:
            raise _fail(str(exc)) from None
    for result in results:
        line = f"{result.resource}: {result.status}, {result.objects} objects ({result.lines_read} lines read)"
        line += f": {result.error}" if result.error else ""
        console.print(line + (f"; {result.notice}" if result.notice else ""), highlight=False, soft_wrap=True)
    if any(r.status != "staged" for r in results):
        raise _fail("the backfill is not complete; run it again to resume", code=1)
    console.print("staged as history: the workers apply it (no automation fires)")


@app.command()
def reconcile(shop: ShopOption,
              resources: Annotated[str, typer.Option(help="comma-separated: customers, products, orders, "
                                                          "checkouts")] = "customers,products,orders,checkouts",
              ids: Annotated[bool, typer.Option(help="list the ids that differ (reads every id from Shopify with "
                                                     "bulk queries and Brevo's list page by page)")] = True,
              ) -> None:
    """Count each resource in Shopify, in the connector and in Brevo, and list the ids that differ. Exit 1 when
    they do not agree."""
    from connector.brevo import BrevoClient, BrevoError
    from connector.shopify import ShopifyError
    from connector.shops import credentials, shopify_client
    from sync.backfill import ORDER
    from sync.reconcile import SHOWN_IDS, count_report

    wanted = [r.strip() for r in resources.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ORDER]
    if unknown:
        raise _fail(f"unknown resource {unknown[0]!r}: choose from {', '.join(ORDER)}")
    engine, found, settings = _known_shop(shop)
    shopify = shopify_client(found, settings, engine=engine)
    key = credentials(found, settings).brevo_api_key
    brevo = BrevoClient(key, base_url=settings.brevo_api_url) if key else None
    try:
        lines = count_report(engine, found.domain, shopify, brevo, resources=wanted, ids=ids)
    except (ShopifyError, BrevoError) as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    table = Table("", "Shopify", "connector", "Brevo", "missing", "extra", title=f"{found.domain}")
    for line in lines:
        brevo_cell = "" if line.brevo is None else (
            f"{line.brevo}" + (f" (sent {line.brevo_expected})" if line.brevo_expected is not None else ""))
        table.add_row(line.name, "" if line.shopify is None else str(line.shopify), str(line.connector), brevo_cell,
                      str(len(line.missing)) if ids else "", str(len(line.extra)) if ids else "",
                      style=None if line.agrees else "red")
    console.print(table)
    for line in lines:
        for label, values, where in (("missing", line.missing, "from the connector" if line.name != "contacts"
                                      else "from Brevo (connector contact keys)"),
                                     ("extra", line.extra, "in the connector, gone from Shopify"
                                      if line.name != "contacts" else "in Brevo's list, unknown to the connector")):
            if values:
                shown = ", ".join(values[:SHOWN_IDS]) + (f" and {len(values) - SHOWN_IDS} more"
                                                          if len(values) > SHOWN_IDS else "")
                console.print(f"{line.name} {label} {where}: {shown}", highlight=False, soft_wrap=True)
    if shopify is None:
        console.print("no Shopify access token: Shopify's side was not read")
    if not all(line.agrees for line in lines):
        raise _fail("Shopify, the connector and Brevo do not agree (see above); a backfill or the next "
                    "reconciliation poll brings what is missing", code=1)
    console.print("Shopify, the connector and Brevo agree")


def _known_shop(shop: str) -> tuple[Engine, Shop, Settings]:
    """The engine, the shop by its domain, and the settings; a clear error (exit 2) when there is no such shop."""
    from sqlalchemy.orm import Session
    from sqlmodel import col

    from connector.models import Shop
    from connector.shops import ShopError, normalise_domain

    settings = _settings()
    try:
        domain = normalise_domain(shop)
    except ShopError as exc:
        raise _fail(str(exc)) from None
    engine = _engine(settings)
    with Session(engine) as session:
        found = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
    if found is None:
        raise _fail(f"no shop {domain}: add it with `connector shops add` first")
    return engine, found, settings


def main() -> None:
    tune_gc()
    try:
        app()
    except MissingSetting as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
