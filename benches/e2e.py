#!/usr/bin/env python3
"""End-to-end benchmark: the release binary (and optionally dlt) against the fake server.

Each run starts `chatwoot-export fake-server` as a separate process on a free loopback port,
runs one export under `/usr/bin/time -v`, records wall time, user+sys CPU and peak RSS of the
exporter, reads the server's own CPU from /proc, and kills the server by its PID. The results
go to stdout (and `--markdown FILE`) as a markdown table, followed by the targets of issue #6
and whether each is met.

Not part of CI (tests/run.sh never runs it): the figures depend on the machine and on what else
it is doing. Standard library only; the dlt runs use the Python given by `--dlt`, a venv with
benches/requirements-dlt.txt installed:

    python3 -m venv target/dlt-venv
    target/dlt-venv/bin/pip install -r benches/requirements-dlt.txt
    cargo build --release
    python3 benches/e2e.py --dlt target/dlt-venv/bin/python --markdown target/e2e.md

Runs (`--only` picks some): server (requests per second the fake server answers, with wrk if
installed), 100k (100,000 contacts, no latency), 1m (1,000,000 contacts, no latency), latency
(20,000 contacts, 100 ms a request, concurrency 16), ratelimit (20,000 contacts, 600 requests
per 10 s window on both sides; needs `--rate-limit` on `fake-server` and on `contacts`, else
reported as pending), ratelearn (the same server, the exporter told only the window's length,
learning the limit from the 429s; no dlt row, dlt is told nothing either way).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fake-token"
PAGE_SIZE = 15
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Scenario:
    key: str
    contacts: int
    latency_ms: int = 0
    concurrency: int | None = None
    rate_limit: tuple[int, int] | None = None  # (requests, window seconds)
    # The exporter is told the server's limit; if not, it is told only the window's length
    # and keeps its default budget (3,000, more than the server allows), learning the limit
    # from the 429s.
    told: bool = True

    @property
    def pages(self) -> int:
        """Pages an export fetches: the full ones, a partial one, and the empty one after."""
        return -(-self.contacts // PAGE_SIZE) + 1

    def describe(self) -> str:
        parts = [f"{self.contacts:,} contacts"]
        parts.append(f"{self.latency_ms} ms latency" if self.latency_ms else "no latency")
        if self.concurrency:
            parts.append(f"concurrency {self.concurrency}")
        if self.rate_limit:
            parts.append(f"{self.rate_limit[0]} req / {self.rate_limit[1]} s window")
            if not self.told:
                parts.append("limit not told")
        return ", ".join(parts)


SCENARIOS = {
    "100k": Scenario("100k", 100_000),
    "1m": Scenario("1m", 1_000_000),
    "latency": Scenario("latency", 20_000, latency_ms=100, concurrency=16),
    "ratelimit": Scenario("ratelimit", 20_000, rate_limit=(600, 10)),
    "ratelearn": Scenario("ratelearn", 20_000, rate_limit=(600, 10), told=False),
}


@dataclass
class Result:
    scenario: Scenario
    tool: str
    status: str = "ok"  # ok | failed | pending | skipped
    note: str = ""
    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    rss_kb: int = 0
    server_cpu: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu / self.scenario.contacts * 100_000


def help_text(binary: Path, subcommand: str) -> str:
    done = subprocess.run([str(binary), subcommand, "--help"], capture_output=True, text=True)
    return done.stdout


class FakeServer:
    """`chatwoot-export fake-server` in its own process, stopped by PID."""

    def __init__(self, binary: Path, scenario: Scenario, seed: int = 42):
        args = [str(binary), "fake-server", "--port", "0", "--contacts", str(scenario.contacts),
                "--seed", str(seed), "--latency-ms", str(scenario.latency_ms)]
        if scenario.rate_limit:
            args += ["--rate-limit", str(scenario.rate_limit[0]),
                     "--rate-window-secs", str(scenario.rate_limit[1])]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        line = self.process.stdout.readline().strip() if self.process.stdout else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the fake server did not start: {line!r}")
        self.url = line

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def timed(command: list[str], env: dict, timeout: float) -> tuple[int, dict, str]:
    """Runs `command` under /usr/bin/time -v; returns its exit code, the measures, stderr."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        done = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *command], env=env,
                              capture_output=True, text=True, timeout=timeout)
        text = Path(report.name).read_text()

    def grab(label: str) -> str:
        match = re.search(rf"^\s*{re.escape(label)}: (.*)$", text, re.MULTILINE)
        return match.group(1).strip() if match else "0"

    wall_text = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    wall = 0.0
    for part in wall_text.split(":"):
        wall = wall * 60 + float(part)
    measures = {
        "wall": wall,
        "user": float(grab("User time (seconds)")),
        "sys": float(grab("System time (seconds)")),
        "rss_kb": int(grab("Maximum resident set size (kbytes)")),
    }
    return done.returncode, measures, done.stdout + done.stderr


def run_tool(binary: Path, scenario: Scenario, workdir: Path, timeout: float) -> Result:
    result = Result(scenario, "chatwoot-export")
    if scenario.rate_limit:
        server_has = "--rate-limit" in help_text(binary, "fake-server")
        exporter_has = "--rate-limit" in help_text(binary, "contacts")
        if not (server_has and exporter_has):
            result.status, result.note = "pending", "pending (needs the rate governor)"
            return result
    server = FakeServer(binary, scenario)
    out = workdir / f"tool-{scenario.key}"
    try:
        command = [str(binary), "contacts", "--base-url", server.url, "--account-id", "1",
                   "--out", str(out), "--overwrite", "--no-progress"]
        if scenario.concurrency:
            command += ["--concurrency", str(scenario.concurrency)]
        if scenario.rate_limit and scenario.told:
            command += ["--rate-limit", str(scenario.rate_limit[0]),
                        "--rate-window-secs", str(scenario.rate_limit[1])]
        elif scenario.rate_limit:
            # The window's length is Chatwoot's (rack-attack's period: 60 s, the default here),
            # the number is the admin's (RACK_ATTACK_LIMIT): keep the default budget of 3,000,
            # to be learned down from the 429s, in the fake server's shorter window.
            command += ["--rate-window-secs", str(scenario.rate_limit[1])]
        else:
            # The fake server has no limit here; the default budget (3,000 a minute, the real
            # API's) would make this row time the budget instead of the exporter.
            command += ["--rate-limit", "0"]
        env = {**os.environ, "CHATWOOT_API_TOKEN": TOKEN}
        started = time.time()
        code, measures, output = timed(command, env, timeout)
        result.extra["span"] = (started, time.time())
        result.server_cpu = server.cpu_seconds()
    finally:
        server.stop()
    vars(result).update(measures)
    if code != 0:
        result.status, result.note = "failed", output.strip().splitlines()[-1][:160]
        return result
    manifest = json.loads((out / "manifest.json").read_text())
    result.extra["pages"] = manifest["pages_fetched"]
    result.extra["requests"] = manifest.get("requests", 0)
    result.extra["throttled"] = manifest.get("throttled", 0)
    result.extra["rows"] = manifest["unique_contacts"]
    if manifest["unique_contacts"] != scenario.contacts:
        result.status = "failed"
        result.note = f"exported {manifest['unique_contacts']} of {scenario.contacts} contacts"
    shutil.rmtree(out, ignore_errors=True)
    return result


def run_dlt(python: str, binary: Path, scenario: Scenario, workdir: Path,
            timeout: float) -> Result:
    result = Result(scenario, "dlt")
    if scenario.rate_limit and "--rate-limit" not in help_text(binary, "fake-server"):
        result.status, result.note = "pending", "pending (the fake server has no --rate-limit)"
        return result
    server = FakeServer(binary, scenario)
    out = workdir / f"dlt-{scenario.key}"
    shutil.rmtree(out, ignore_errors=True)
    try:
        command = [python, str(ROOT / "benches" / "dlt_export.py"), "--base-url", server.url,
                   "--account-id", "1", "--out", str(out)]
        env = {**os.environ, "CHATWOOT_API_TOKEN": TOKEN, "RUNTIME__LOG_LEVEL": "WARNING"}
        try:
            code, measures, output = timed(command, env, timeout)
        except subprocess.TimeoutExpired:
            result.status, result.note = "failed", f"did not finish in {timeout:.0f} s"
            return result
        result.server_cpu = server.cpu_seconds()
    finally:
        server.stop()
    vars(result).update(measures)
    if code != 0:
        result.status, result.note = "failed", output.strip().splitlines()[-1][:160]
        return result
    counts = re.search(r"rows: contacts=(\d+) contact_inboxes=(\d+)", output)
    rows = int(counts.group(1)) if counts else -1
    result.extra["rows"] = rows
    if rows != scenario.contacts:
        result.status = "failed"
        result.note = f"loaded {rows} of {scenario.contacts} contacts"
    shutil.rmtree(out, ignore_errors=True)
    return result


def server_capacity(binary: Path, concurrency: int, seconds: int) -> str:
    """Requests per second the fake server answers for a full page, measured with wrk."""
    wrk = shutil.which("wrk")
    if not wrk:
        return "not measured (install wrk: apt-get install wrk)"
    scenario = Scenario("server", 1_000_000)
    server = FakeServer(binary, scenario)
    try:
        url = f"{server.url}/api/v1/accounts/1/contacts?page=2&sort=created_at"
        done = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "-H",
                               f"api_access_token: {TOKEN}", url],
                              capture_output=True, text=True, timeout=seconds + 30)
        cpu = server.cpu_seconds()
    finally:
        server.stop()
    match = re.search(r"Requests/sec:\s*([\d.]+)", done.stdout)
    if not match:
        return f"wrk failed: {done.stdout.strip()[-200:]}"
    rps = float(match.group(1))
    return (f"{rps:,.0f} pages/s ({rps * PAGE_SIZE:,.0f} contacts/s) with {concurrency} "
            f"connections, {cpu / seconds:.2f} CPU of the server process")


def fmt_row(r: Result) -> str:
    s = r.scenario
    if r.status in ("pending", "skipped"):
        return f"| {s.describe()} | {r.tool} | {r.note} | | | | | |"
    pages = r.extra.get("pages", s.pages)
    note = r.note if r.status != "ok" else ""
    return (f"| {s.describe()} | {r.tool} | {r.wall:.2f} | {r.user:.2f} + {r.sys:.2f} | "
            f"{r.cpu_per_100k:.3f} | {r.rss_kb / 1024:.1f} | {pages:,} ({r.server_cpu:.1f} s) "
            f"| {note} |")


def targets(results: list[Result]) -> list[str]:
    def find(tool: str, key: str) -> Result | None:
        return next((r for r in results if r.tool == tool and r.scenario.key == key
                     and r.status == "ok"), None)

    lines = []
    ok = lambda met: "met" if met else "MISSED"  # noqa: E731
    for key in ("100k", "1m"):
        r = find("chatwoot-export", key)
        if r:
            lines.append(f"- CPU at {r.scenario.contacts:,}: {r.cpu_per_100k:.3f} CPU-s per "
                         f"100k contacts (target <= 0.5): {ok(r.cpu_per_100k <= 0.5)}")
    small, big = find("chatwoot-export", "100k"), find("chatwoot-export", "1m")
    if big:
        mb = big.rss_kb / 1024
        lines.append(f"- Peak RSS at 1,000,000: {mb:.1f} MB (target <= 96 MB): {ok(mb <= 96)}")
        if small:
            ratio = big.rss_kb / small.rss_kb
            lines.append(f"- Peak RSS 1,000,000 / 100,000: {ratio:.2f} (target <= 1.25): "
                         f"{ok(ratio <= 1.25)}")
    r = find("chatwoot-export", "latency")
    if r:
        pages = r.extra.get("pages", r.scenario.pages)
        ideal = pages * r.scenario.latency_ms / 1000 / (r.scenario.concurrency or 1)
        over = r.wall / ideal - 1
        lines.append(f"- Latency-bound: {r.wall:.2f} s for {pages} pages, ideal {ideal:.2f} s "
                     f"(pages x 0.1 s / 16): {over:+.1%} (target <= +5%): {ok(over <= 0.05)}")
    for key in ("100k", "1m", "latency", "ratelimit"):
        mine, theirs = find("chatwoot-export", key), find("dlt", key)
        if mine and theirs and mine.cpu > 0:
            ratio = theirs.cpu_per_100k / mine.cpu_per_100k
            lines.append(f"- dlt / chatwoot-export CPU, {mine.scenario.describe()}: "
                         f"{ratio:.0f}x (target >= 50x): {ok(ratio >= 50)}")
    for r in filter(None, (find("chatwoot-export", k) for k in ("ratelimit", "ratelearn"))):
        # The fake server's windows are aligned to the epoch, as rack-attack's: a run of N
        # requests at L a window needs at least ceil(N / L) windows. Using the budget fully
        # means touching no more windows than that (the first and last may be partial).
        limit, window = r.scenario.rate_limit or (1, 1)
        requests, throttled = r.extra.get("requests", 0), r.extra.get("throttled", 0)
        started, ended = r.extra.get("span", (0.0, 0.0))
        touched = int(ended // window) - int(started // window) + 1
        fewest = -(-(requests - throttled) // limit)
        share = throttled / requests if requests else 0.0
        told = "told the limit" if r.scenario.told else "learning the limit"
        lines.append(f"- Rate-limited, {told}: {requests:,} requests, {throttled} answered 429 "
                     f"({share:.2%}; target < 2%): {ok(share < 0.02)}; the run touched "
                     f"{touched} windows of {window} s, the fewest that hold its "
                     f"{requests - throttled:,} answered requests at {limit} a window is "
                     f"{fewest} (one more when the first window has too little time left to "
                     f"fill): {ok(touched <= fewest + 1)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, default=ROOT / "target/release/chatwoot-export")
    parser.add_argument("--only", nargs="*", default=["server", *SCENARIOS],
                        help="runs to do: server 100k 1m latency ratelimit ratelearn")
    parser.add_argument("--dlt", metavar="PYTHON",
                        help="also run dlt with this Python (a venv with requirements-dlt.txt)")
    parser.add_argument("--dlt-max-secs", type=float, default=1200,
                        help="skip a dlt run projected (from its 100k rate) to take longer")
    parser.add_argument("--timeout", type=float, default=3600, help="limit of one run, seconds")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    if not args.binary.exists():
        sys.exit(f"{args.binary} not found: run cargo build --release first")

    report = ["## End-to-end runs", ""]
    machine = machine_line()
    report += [f"Machine: {machine}", ""]
    print(report[-2], flush=True)
    if "server" in args.only:
        for concurrency in (8, 16):
            line = f"Fake server alone: {server_capacity(args.binary, concurrency, 10)}"
            print(line, flush=True)
            report += [line, ""]

    results: list[Result] = []
    dlt_rate = None  # CPU-independent wall seconds per contact of dlt at 100k
    with tempfile.TemporaryDirectory(prefix="cwx-e2e-") as work:
        workdir = Path(work)
        for key in [k for k in SCENARIOS if k in args.only]:
            scenario = SCENARIOS[key]
            # dlt is told nothing either way: one rate-limited dlt row is enough.
            with_dlt = args.dlt and scenario.told
            runs = [("chatwoot-export", None)] + ([("dlt", args.dlt)] if with_dlt else [])
            for tool, python in runs:
                print(f"running {tool}: {scenario.describe()} ...", file=sys.stderr, flush=True)
                if tool == "dlt":
                    projected = dlt_rate * scenario.contacts if dlt_rate else 0
                    if not scenario.latency_ms and projected > args.dlt_max_secs:
                        result = Result(scenario, "dlt", "skipped",
                                        f"skipped: would take about {projected / 60:.0f} min "
                                        f"at its 100k rate")
                    else:
                        result = run_dlt(python, args.binary, scenario, workdir, args.timeout)
                    if key == "100k" and result.status == "ok":
                        dlt_rate = result.wall / scenario.contacts
                else:
                    result = run_tool(args.binary, scenario, workdir, args.timeout)
                results.append(result)
                print(fmt_row(result), flush=True)

    report += [
        "| run | tool | wall s | user + sys CPU s | CPU s per 100k contacts | peak RSS MB "
        "| pages (server CPU s) | note |",
        "|---|---|---|---|---|---|---|---|",
        *map(fmt_row, results),
        "",
        "Targets:",
        "",
        *targets(results),
    ]
    text = "\n".join(report) + "\n"
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([
            {**{k: v for k, v in vars(r).items() if k != "scenario"},
             "scenario": vars(r.scenario)} for r in results], indent=2))
    return 0


def machine_line() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        mem_kb = 0
    return f"{os.cpu_count()} CPUs ({model}), {mem_kb / 1024 / 1024:.0f} GiB memory"


if __name__ == "__main__":
    sys.exit(main())
