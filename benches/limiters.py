#!/usr/bin/env python3
"""The exporter against real rate limiters with their real periods (issue 14's table).

Each row starts `chatwoot-export fake-server` on a free loopback port, puts a real limiter in
front of it, runs one export through the limiter and prints a markdown table row:

- rack-attack 6.6.1 on Redis under puma, configured like Chatwoot's `req/ip` throttle
  (tests/limiters/config.ru, the same file the tests use), with 60 s windows;
- nginx `limit_req` (tests/limiters/nginx.conf.in, the tests' template).

Columns: the requests the exporter sent, the share of them the limiter rejected (429 or 503,
counted from the limiter's own log), its throughput as a share of the limiter's sustainable
rate (requests served / wall time / rate), wall time against the ideal (requests served at the
sustainable rate), the second client's rejected share, and whether the export came out exact
(exit 0, `complete`, every contact once). A row that runs past `--max-secs` is stopped and says
how far it got. The issue's targets: throughput >= 90% (95% for rack-attack from a clean
window; judged here against the share of the rate the run aims for, default 90%, and raw
with `--rate-share 1`), rejected < 2%, the second client < 5%.

Not part of CI: it takes minutes a row (60 s windows). Needs the Debian packages ruby-rack-attack,
puma, redis-server, ruby-redis and nginx (.ci/run installs them). Standard library only:

    cargo build --release
    python3 benches/limiters.py target/release/chatwoot-export 9000
    python3 benches/limiters.py target/debug/chatwoot-export 300 --only nginx-20rs-429

Every process it starts is stopped by its PID, also when a row fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMITERS = ROOT / "tests" / "limiters"
TOKEN = "bench-token"
PAGE_SIZE = 15


@dataclass
class Row:
    key: str
    label: str
    kind: str  # "rack-attack" or "nginx"
    # rack-attack: requests per period
    limit: int = 0
    period: int = 60
    retry_after: bool = False
    clock_offset: float = 0.0
    send_date: bool = False
    # another client used the window just before: this many requests right at its start
    burst_before: int = 0
    # nginx: limit_req_zone rate ("20r/s", "600r/m"), burst, nodelay, status, Retry-After
    rate: str = ""
    burst: int = 0
    nodelay: bool = True
    status: int = 429
    retry_after_secs: int | None = None
    # a second client on the same IP, one request every this many seconds
    second_every: float | None = None
    # what the exporter is told
    told: tuple[str, ...] = ()

    def rate_per_sec(self) -> float:
        if self.kind == "rack-attack":
            return self.limit / self.period
        count, unit = self.rate.split("r/")
        return int(count) / {"s": 1, "m": 60}[unit]


ROWS = [
    Row("ra300-clean", "rack-attack 300/60 s, clean window", "rack-attack", 300),
    Row("ra3000-clean", "rack-attack 3,000/60 s, clean window", "rack-attack", 3000),
    Row("ra300-used", "rack-attack 300/60 s, window used just before (290)", "rack-attack", 300,
        burst_before=290),
    Row("ra300-used-told", "rack-attack 300/60 s, window used just before, told 300/60",
        "rack-attack", 300, burst_before=290,
        told=("--rate-limit", "300", "--rate-window-secs", "60")),
    Row("ra300-clock", "rack-attack 300/60 s, server clock +20 s, no Date", "rack-attack", 300,
        clock_offset=20),
    Row("ra300-clock-date", "rack-attack 300/60 s, server clock +20 s, with Date",
        "rack-attack", 300, clock_offset=20, send_date=True),
    Row("ra100-10s", "rack-attack 100/10 s, window not told", "rack-attack", 100, period=10),
    Row("ra300-tab", "rack-attack 300/60 s + a second client at 1 request/s", "rack-attack",
        300, second_every=1.0),
    Row("ra300-tab-told", "rack-attack 300/60 s + a second client at 1 request/s, told 300/60",
        "rack-attack", 300, second_every=1.0,
        told=("--rate-limit", "300", "--rate-window-secs", "60")),
    Row("ra300-clean-all", "rack-attack 300/60 s, clean window, whole budget", "rack-attack", 300,
        told=("--rate-share", "1")),
    Row("ra10-1s-retry", "1 s windows, 10/s, 429 with Retry-After (rack-attack 10/1 s)",
        "rack-attack", 10, period=1, retry_after=True),
    Row("nginx-20rs-429", "nginx 20 r/s burst 10 nodelay, 429", "nginx", rate="20r/s",
        burst=10),
    Row("nginx-20rs-503", "nginx 20 r/s burst 10 nodelay, 503 (default)", "nginx",
        rate="20r/s", burst=10, status=503),
    Row("nginx-5rs-delay", "nginx 5 r/s burst 5 (delaying), 429 + Retry-After: 1", "nginx",
        rate="5r/s", burst=5, nodelay=False, retry_after_secs=1),
    Row("nginx-600rm", "nginx 600 r/m burst 20, 429", "nginx", rate="600r/m", burst=20),
    Row("nginx-20rs-told", "nginx 20 r/s burst 10, 429, told 20/1 s", "nginx", rate="20r/s",
        burst=10, told=("--rate-limit", "20", "--rate-window-secs", "1")),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not path:
        sys.exit(f"limiters.py: {program} is not installed: apt-get install {package}")
    return path


class Processes:
    """Processes this script started, stopped by PID in reverse order."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], port: int, log: Path, env: dict | None = None,
              what: str = "") -> subprocess.Popen:
        with open(log, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})})
        self.started.append(process)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what or args[0]} did not start:\n{log.read_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.kill()
            process.wait()
        self.started.clear()


def start_fake(processes: Processes, binary: str, contacts: int, work: Path) -> str:
    port = free_port()
    processes.start([binary, "fake-server", "--port", str(port), "--contacts", str(contacts),
                     "--token", TOKEN], port, work / "fake.log", what="the fake server")
    return f"127.0.0.1:{port}"


def start_rack_attack(processes: Processes, row: Row, upstream: str, work: Path) -> tuple[str, Path]:
    redis_port, port = free_port(), free_port()
    processes.start([need("redis-server", "redis-server"), "--port", str(redis_port), "--bind",
                     "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
                    redis_port, work / "redis.log")
    log = work / "requests.log"
    env = {
        "UPSTREAM": f"http://{upstream}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RACK_ATTACK_LIMIT": str(row.limit),
        "RACK_ATTACK_PERIOD": str(row.period),
        "RETRY_AFTER": "1" if row.retry_after else "0",
        "CLOCK_OFFSET_SECS": str(row.clock_offset),
        "SEND_DATE": "1" if row.send_date else "0",
        "REQUEST_LOG": str(log),
    }
    processes.start([need("puma", "puma ruby-rack-attack ruby-redis"), "--quiet",
                     "--environment", "production", "--workers", "0", "--threads", "16:16",
                     "--bind", f"tcp://127.0.0.1:{port}", str(LIMITERS / "config.ru")],
                    port, work / "puma.log", env, what="puma (rack-attack)")
    return f"http://127.0.0.1:{port}", log


def start_nginx(processes: Processes, row: Row, upstream: str, work: Path) -> tuple[str, Path]:
    port = free_port()
    (work / "tmp").mkdir(exist_ok=True)
    retry, location = "", ""
    if row.retry_after_secs is not None:
        retry = f"error_page {row.status} @limited;"
        location = (f"        location @limited {{ add_header Retry-After {row.retry_after_secs}"
                    f" always; return {row.status} \"Retry later\\n\"; }}")
    conf = (LIMITERS / "nginx.conf.in").read_text()
    for name, value in [("PORT", str(port)),
                        ("UPSTREAM", upstream), ("RATE", row.rate),
                        ("BURST", f"{row.burst}{' nodelay' if row.nodelay else ''}"),
                        ("STATUS", str(row.status)), ("RETRY_AFTER_LOCATION", location),
                        ("RETRY_AFTER", retry)]:
        conf = conf.replace(f"@{name}@", value)
    (work / "nginx.conf").write_text(conf)
    processes.start([need("nginx", "nginx"), "-p", str(work), "-c", str(work / "nginx.conf")],
                    port, work / "nginx.stderr", what="nginx")
    return f"http://127.0.0.1:{port}", work / "access.log"


def get_page_one(url: str, client: str) -> int:
    request = urllib.request.Request(f"{url}/api/v1/accounts/1/contacts?page=1",
                                     headers={"api_access_token": TOKEN, "X-Client": client})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


class SecondClient(threading.Thread):
    """A browser tab on the same IP: one request every `every` seconds, on a schedule."""

    def __init__(self, url: str, every: float):
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.sent = self.rejected = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            self.sent += 1
            if get_page_one(self.url, "second") in (429, 503):
                self.rejected += 1
            next_at += self.every
            self.stopping.wait(max(0.0, next_at - time.monotonic()))


def read_log(log: Path) -> list[tuple[float, int, str]]:
    """(time, status, client) of every request the limiter logged; "-" and "export" are the
    exporter (nginx and rack-attack spell a missing X-Client differently)."""
    lines = []
    for line in log.read_text().splitlines() if log.exists() else []:
        time_, status, client = line.split(" ", 2)
        lines.append((float(time_), int(status), "export" if client in ("-", "export") else client))
    return lines


def run_row(row: Row, binary: str, contacts: int, concurrency: int, max_secs: float) -> dict:
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix=f"limiters-{row.key}-") as tmp:
        work = Path(tmp)
        try:
            upstream = start_fake(processes, binary, contacts, work)
            start = start_rack_attack if row.kind == "rack-attack" else start_nginx
            url, log = start(processes, row, upstream, work)
            if row.burst_before:
                # At the start of a window (by this machine's clock, which the server shares
                # here), as a job that finished just before would have left it.
                time.sleep(row.period - time.time() % row.period + 0.05)
                for _ in range(row.burst_before):
                    get_page_one(url, "burst")
            tab = SecondClient(url, row.second_every) if row.second_every else None
            if tab:
                tab.start()
            out = work / "out"
            args = [binary, "contacts", "--base-url", url, "--account-id", "1", "--format",
                    "parquet", "--out", str(out), "--no-progress", "--concurrency",
                    str(concurrency), *row.told]
            started = time.monotonic()
            with open(work / "export.log", "wb") as err:
                export = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err,
                                          stdin=subprocess.DEVNULL,
                                          env={**os.environ, "CHATWOOT_API_TOKEN": TOKEN})
                try:
                    code = export.wait(timeout=max_secs)
                except subprocess.TimeoutExpired:
                    export.kill()
                    export.wait()
                    code = None
            wall = time.monotonic() - started
            if tab:
                tab.stopping.set()
                tab.join()
            requests = [r for r in read_log(log) if r[2] == "export"]
            rejected = sum(1 for r in requests if r[1] in (429, 503))
            served = len(requests) - rejected
            manifest_path = out / "manifest.json"
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            exact = (code == 0 and manifest.get("complete") is True
                     and manifest.get("unique_contacts") == contacts)
            rate = row.rate_per_sec()
            if tab and tab.sent:
                rate -= 1 / row.second_every  # what the tab leaves of the budget
            needed = -(-contacts // PAGE_SIZE) + 2  # pages, the empty one, the definitions
            return {
                "row": row, "code": code, "wall": wall, "requests": len(requests),
                "rejected": rejected, "served": served, "needed": needed,
                "throughput": served / wall / rate, "ideal": served / rate, "exact": exact,
                "share": manifest.get("rate", {}).get("share", 1.0),
                "tab": (tab.rejected, tab.sent) if tab else None,
                "stderr_tail": (work / "export.log").read_text()[-400:],
            }
        finally:
            processes.stop()


def table(results: list[dict], contacts: int) -> str:
    lines = [
        f"| scenario ({contacts:,} contacts) | requests | rejected (429/503) | throughput, % of "
        "the limiter's rate (of the share it aims for) | wall vs ideal | second client rejected | "
        "exact |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        row = r["row"]
        label = row.label if not row.told else f"{row.label} ({' '.join(row.told)})"
        wall = f"{r['wall']:.1f} s vs {r['ideal']:.1f} s ({r['wall'] / max(r['ideal'], 1e-9):.2f}x)"
        if r["code"] is None:
            wall += f", stopped: {r['served']} of {r['needed']} requests served"
        tab = "-"
        if r["tab"]:
            tab = f"{r['tab'][0]} of {r['tab'][1]} ({100 * r['tab'][0] / max(r['tab'][1], 1):.0f}%)"
        share = 100 * r["rejected"] / max(r["requests"], 1)
        exact = "yes" if r["exact"] else ("stopped" if r["code"] is None else f"no (exit {r['code']})")
        lines.append(f"| {label} | {r['requests']:,} | {r['rejected']:,} ({share:.1f}%) | "
                     f"{100 * r['throughput']:.1f}% ({100 * r['throughput'] / r['share']:.0f}% of "
                     f"{100 * r['share']:.0f}%) | {wall} | {tab} | {exact} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary", help="the chatwoot-export binary, e.g. target/release/chatwoot-export")
    parser.add_argument("contacts", type=int, help="contacts in the fake account (15 a page)")
    parser.add_argument("--only", action="append", choices=[r.key for r in ROWS],
                        help="run only these rows (repeatable)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-secs", type=float, default=600,
                        help="stop an export after this long and report how far it got")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or r.key in args.only]
    results = []
    for row in rows:
        print(f"limiters.py: {row.label} ...", file=sys.stderr, flush=True)
        result = run_row(row, args.binary, args.contacts, args.concurrency, args.max_secs)
        if result["code"] not in (0, None):
            print(f"limiters.py: {row.key}: exit {result['code']}: {result['stderr_tail']}",
                  file=sys.stderr)
        results.append(result)
    print(table(results, args.contacts))


if __name__ == "__main__":
    main()
