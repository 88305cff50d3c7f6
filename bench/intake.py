"""Benchmark: webhook intake throughput and p50/p99 latency over loopback HTTP, connector vs a minimal reference.

Run by hand:
    .venv/bin/python bench/intake.py [--duration 15] [--connections 32] [--threads 2] [--rounds 3]
                                     [--database sqlite|postgres]

Two servers, each in its own uvicorn process started the same way (1 worker, same loop and HTTP implementation,
no access log, 127.0.0.1, a free port, a fresh temporary database):
  reference  bench/reference_intake.py: verify the HMAC, json.loads, INSERT into SQLite (WAL), 200; always SQLite.
  connector  webhooks.app.create_app on SQLite, or with --database postgres on a dedicated `bench_intake`
             database (dropped and recreated each run) on the PostgreSQL server of --postgres-url.
`wrk` (Debian: apt-get install wrk) drives both with bench/wrk_unique_events.lua: one realistic signed
`orders/create` body (about 8 KB) with a unique X-Shopify-Event-Id per request. After a warm-up, the two are
measured alternately (the order flips every round); the table shows each round and the medians, the ratio
connector/reference, and the targets (ratio >= 0.5, connector p99 <= 25 ms). At the end every run is checked
against the databases: rows stored == 2xx responses counted by wrk, plus at most the requests still in flight
when wrk stopped (stored by the server but never acknowledged). Exit status 1 if that check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from connector.database import make_engine, upgrade
from connector.sandbox.server import free_port
from connector.sandbox.shopify import many_orders
from connector.settings import Settings
from webhooks.app import ConnectorApp

BENCH_DIR = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH_DIR / "wrk_unique_events.lua"
PATH = "/webhooks/shopify"
SHOP = "bench-store.myshopify.com"
SECRET = "bench-secret"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_BENCH_DATABASE = "bench_intake"
SERVERS = ("reference", "connector")
TARGET_RATIO = 0.5
TARGET_P99_MS = 25.0


def connector_app() -> ConnectorApp:
    """uvicorn factory for the connector's app; database URL and secret from BENCH_DATABASE_URL, BENCH_SECRET."""
    from webhooks.app import create_app

    url = os.environ["BENCH_DATABASE_URL"]
    settings = Settings(DATABASE_URL=url, SHOPIFY_API_SECRET=os.environ["BENCH_SECRET"], _env_file=None)
    return create_app(make_engine(url), settings)


@dataclass(frozen=True)
class Run:
    """One wrk run against one server, as wrk reported it (plus the Lua script's counts)."""

    server: str
    label: str  # "warm-up" or the round number
    tag: str  # event-id prefix of this run
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    responses: int
    non_2xx: int
    socket_errors: int
    sent: int
    ok: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_COUNTS = re.compile(r"^bench-counts sent=(\d+) answered=(\d+) ok=(\d+)", re.MULTILINE)


def parse_wrk(output: str, *, server: str, label: str, tag: str) -> Run:
    """Read requests/s, the 50% and 99% lines of `--latency`'s distribution and the counts from wrk's output."""
    percentiles = {m[1]: float(m[2]) * _UNITS_MS[m[3]] for m in _PERCENTILE.finditer(output)}
    rps, total, counts = _RPS.search(output), _TOTAL.search(output), _COUNTS.search(output)
    if rps is None or total is None or counts is None or set(percentiles) != {"50", "99"}:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = _NON_2XX.search(output)
    socket_errors = _SOCKET.search(output)
    return Run(server=server, label=label, tag=tag, requests_per_s=float(rps[1]), p50_ms=percentiles["50"],
               p99_ms=percentiles["99"], responses=int(total[1]), non_2xx=int(non_2xx[1]) if non_2xx else 0,
               socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
               sent=int(counts[1]), ok=int(counts[3]))


@dataclass(frozen=True)
class Payload:
    body_file: Path
    headers_file: Path
    size: int


def write_payload(workdir: Path) -> Payload:
    """The smallest of the first ten simulated orders/create bodies (~8 KB), signed; event ids come from wrk."""
    delivery = min(many_orders(SHOP, 10, seed=1), key=lambda d: len(d.body))
    headers = delivery.headers(shop_domain=SHOP, secret=SECRET)
    for unique in ("X-Shopify-Event-Id", "X-Shopify-Webhook-Id"):
        headers.pop(unique)
    body_file, headers_file = workdir / "body.json", workdir / "headers.txt"
    body_file.write_bytes(delivery.body)
    headers_file.write_text("".join(f"{name}: {value}\n" for name, value in headers.items()))
    return Payload(body_file, headers_file, len(delivery.body))


def run_wrk(port: int, payload: Payload, *, seconds: int, threads: int, connections: int, server: str,
            label: str, tag: str) -> Run:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
            "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{PATH}", "--",
            str(payload.body_file), str(payload.headers_file), tag]
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout, server=server, label=label, tag=tag)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not come up:\n{log.read_text()}")


@contextmanager
def uvicorn_server(factory: str, env: dict[str, str], log: Path, *, loop: str, http: str,
                   access_log: bool) -> Iterator[int]:
    """`python -m uvicorn --factory` in its own process; identical options whatever the app. Yields the port."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--factory", factory, "--app-dir", str(BENCH_DIR),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--loop", loop, "--http", http,
            "--lifespan", "off"]
    # `connector web` logs at info, access log included; off by default here to measure the intake itself.
    args += ["--log-level", "info", "--access-log"] if access_log else ["--log-level", "warning", "--no-access-log"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_listening(port, proc, log)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fresh_postgres(server_url: str, database: str = PG_BENCH_DATABASE) -> str:
    """Create a benchmark's own database on the server if missing, empty its public schema; return its URL."""
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                              {"name": database}).first()
        if exists is None:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    url = sa.make_url(server_url).set(database=database).render_as_string(hide_password=False)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    return url


def _implementation(choice: str, fast: str, fallback: str) -> str:
    """What uvicorn's `auto` resolves to here (the fast implementation when it is importable)."""
    if choice != "auto":
        return choice
    return fast if importlib.util.find_spec(fast) is not None else fallback


def _median(runs: list[Run], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in runs))


def print_table(runs: list[Run]) -> None:
    print(f"{'round':<8}{'server':<11}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'2xx':>10}{'non-2xx':>9}"
          f"{'sock err':>9}{'ratio':>8}")
    measured = [r for r in runs if r.label != "warm-up"]
    for run in runs:
        ratio = ""
        if run.server == "connector" and run.label != "warm-up":
            ref = next(r for r in measured if r.server == "reference" and r.label == run.label)
            ratio = f"{run.requests_per_s / ref.requests_per_s:.2f}"
        print(f"{run.label:<8}{run.server:<11}{run.requests_per_s:>9,.0f}{run.p50_ms:>9.2f}{run.p99_ms:>9.2f}"
              f"{run.ok:>10,}{run.non_2xx:>9}{run.socket_errors:>9}{ratio:>8}")
    for server in SERVERS:
        mine = [r for r in measured if r.server == server]
        print(f"{'median':<8}{server:<11}{_median(mine, 'requests_per_s'):>9,.0f}{_median(mine, 'p50_ms'):>9.2f}"
              f"{_median(mine, 'p99_ms'):>9.2f}")


def check_targets(runs: list[Run]) -> None:
    measured = [r for r in runs if r.label != "warm-up"]
    ref = [r for r in measured if r.server == "reference"]
    ours = [r for r in measured if r.server == "connector"]
    ratio = _median(ours, "requests_per_s") / _median(ref, "requests_per_s")
    p99 = _median(ours, "p99_ms")
    print(f"\nratio connector/reference (medians of req/s): {ratio:.2f}  target >= {TARGET_RATIO}  "
          f"{'met' if ratio >= TARGET_RATIO else 'MISSED'}")
    print(f"connector p99 (median of rounds): {p99:.2f} ms  target <= {TARGET_P99_MS:g} ms  "
          f"{'met' if p99 <= TARGET_P99_MS else 'MISSED'}")


def check_rows(runs: list[Run], counters: dict[str, Callable[[str], int]]) -> bool:
    """Per run: ok <= rows <= ok + in flight at the end (sent - responses); and no rows for unsent event ids."""
    print("\nlost-rows check (rows stored per run vs 2xx counted by wrk):")
    good = True
    for run in runs:
        rows = counters[run.server](run.tag)
        in_flight = run.sent - run.responses
        fine = run.ok <= rows <= run.ok + in_flight
        good &= fine
        print(f"  {run.server:<10} {run.label:<8} rows {rows:>8,}  2xx {run.ok:>8,}  "
              f"unacknowledged in flight at wrk stop {in_flight:>3} (stored {rows - run.ok})  "
              f"{'ok' if fine else 'FAIL'}")
    for server, count in counters.items():
        total = count("")
        expected = sum(count(r.tag) for r in runs if r.server == server)
        if total != expected:
            good = False
            print(f"  {server}: {total - expected} rows with event ids no run sent  FAIL")
    print("  nothing acknowledged was lost" if good else "  ROWS MISSING OR UNEXPECTED")
    return good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of warm-up per server (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per server, alternating (default 3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                        help="the connector's database; the reference always uses SQLite")
    parser.add_argument("--postgres-url", default=PG_URL, help="server for --database postgres (default %(default)s)")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    parser.add_argument("--http", choices=["auto", "h11", "httptools"], default="auto")
    parser.add_argument("--access-log", action="store_true",
                        help="both servers log at info with the access log, as `connector web` does")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    payload = write_payload(workdir)
    connector_url = f"sqlite:///{workdir / 'connector.db'}"
    if args.database == "postgres":
        connector_url = fresh_postgres(args.postgres_url)
    upgrade(connector_url)
    reference_db = workdir / "reference.db"
    loop = _implementation(args.loop, "uvloop", "asyncio")
    http = _implementation(args.http, "httptools", "h11")
    print(f"payload: orders/create, {payload.size:,} bytes; connector database: {args.database}; reference: SQLite")
    print(f"uvicorn 1 worker, loop {loop}, http {http}, access log {'on' if args.access_log else 'off'}; "
          f"wrk {args.threads} threads, {args.connections} connections, {args.duration:g} s x {args.rounds} rounds; "
          f"{os.cpu_count()} CPUs\n")

    env = {**os.environ, "BENCH_SECRET": SECRET, "BENCH_REFERENCE_DB": str(reference_db),
           "BENCH_DATABASE_URL": connector_url, "PYTHONPATH": os.pathsep.join(
               p for p in (str(BENCH_DIR.parent), os.environ.get("PYTHONPATH")) if p)}
    factories = {"reference": "reference_intake:create_app", "connector": "intake:connector_app"}
    wrk_options = {"threads": args.threads, "connections": args.connections}
    runs: list[Run] = []
    with (uvicorn_server(factories["reference"], env, workdir / "reference.log", loop=loop, http=http,
                         access_log=args.access_log) as ref_port,
          uvicorn_server(factories["connector"], env, workdir / "connector.log", loop=loop, http=http,
                         access_log=args.access_log) as our_port):
        ports = {"reference": ref_port, "connector": our_port}
        for server in SERVERS:
            run = run_wrk(ports[server], payload, seconds=args.warmup, server=server, label="warm-up",
                          tag="w", **wrk_options)
            if run.ok == 0 or run.non_2xx:
                log = (workdir / f"{server}.log").read_text()
                print(f"{server} refused the warm-up requests ({run.non_2xx} non-2xx):\n{log}", file=sys.stderr)
                return 1
            runs.append(run)
        for number in range(1, args.rounds + 1):
            order = SERVERS if number % 2 else SERVERS[::-1]
            for server in order:
                runs.append(run_wrk(ports[server], payload, seconds=args.duration, server=server,
                                    label=str(number), tag=f"r{number}", **wrk_options))
    # Servers stopped: whatever they were still processing is committed.

    print_table(runs)
    check_targets(runs)
    reference = sqlite3.connect(reference_db)
    engine = make_engine(connector_url)

    def count_reference(tag: str) -> int:
        return int(reference.execute("SELECT count(*) FROM deliveries WHERE event_id LIKE ?",
                                     (f"{tag}-%" if tag else "%",)).fetchone()[0])

    def count_connector(tag: str) -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM inbox WHERE event_id LIKE :p"),
                                    {"p": f"{tag}-%" if tag else "%"}).scalar_one())

    good = check_rows(runs, {"reference": count_reference, "connector": count_connector})
    reference.close()
    engine.dispose()
    if good:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"databases and server logs kept in {workdir}", file=sys.stderr)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
