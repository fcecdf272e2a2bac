#!/usr/bin/env python3
"""Incremental vs full: requests and wall time of a nightly run (issue 19).

Starts `chatwoot-export fake-server` in its own process on a free loopback port, exports the
account in full (the base), simulates days on the fake (`POST /_fake/day`: contacts created,
made active, deleted and silently edited), and after each day runs `contacts --incremental`
into the same folder, then (with `--reference`) a full export into a fresh folder for the
requests a full run of that night costs. Prints a markdown table: requests (from each run's
manifest), the incremental run's share of a full run's, its prediction, measured wall time
(unpaced: the fake has no rate limit unless `--rate-limit` is given), and the wall time both
would take at Chatwoot's limit, computed from the request counts (requests / (limit x share)).

With `--rate-limit 3000` the fake enforces Chatwoot's limit (fixed 60 s windows) and the exports
are told it, so the measured wall times are the ones at the limit; `--also BINARY` (repeatable)
runs the first night's incremental run with other builds too, each from a copy of the same base
and after a fresh window, for an A/B of the wall time in one session:

    python3 benches/incremental.py --contacts 1000000 --rate-limit 3000 --also /tmp/old-build

Not part of CI. Standard library only. It uses target/release/chatwoot-export when there is one,
else target/debug/chatwoot-export (slower, the same requests):

    python3 benches/incremental.py --contacts 1000000 --days 1 --markdown target/incremental.md

The defaults are the issue's scenario: 0.5% of the contacts created and 0.5% active a day, 100
deleted a day (90 older contacts, 10 of the new ones), 0.1% silently edited.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fake-token"


def binary() -> Path:
    for profile in ("release", "debug"):
        path = ROOT / "target" / profile / "chatwoot-export"
        if path.is_file():
            return path
    raise SystemExit("no chatwoot-export binary: run cargo build --release (or cargo build)")


class FakeServer:
    """`chatwoot-export fake-server` in its own process, stopped by PID."""

    def __init__(self, exe: Path, contacts: int, seed: int, rate_limit: int | None):
        args = [str(exe), "fake-server", "--port", "0", "--contacts", str(contacts),
                "--seed", str(seed)]
        if rate_limit:
            args += ["--rate-limit", str(rate_limit), "--rate-window-secs", "60"]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
        line = self.process.stdout.readline().strip() if self.process.stdout else ""
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the fake server did not start: {line!r}")
        self.url = line

    def day(self, plan: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/_fake/day", data=json.dumps(plan).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as answer:
            return json.load(answer)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def export(exe: Path, url: str, out: Path, extra: list[str], rate_limit: int | None) -> dict:
    """Runs one export; returns its manifest with the measured wall time added."""
    args = [str(exe), "contacts", "--base-url", url, "--account-id", "1", "--format", "parquet",
            "--out", str(out), "--no-progress", "--concurrency", "8",
            "--rate-limit", str(rate_limit or 0), *extra]
    env = {**os.environ, "CHATWOOT_API_TOKEN": TOKEN}
    started = time.monotonic()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=6 * 3600)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(extra) or 'full'} export failed ({done.returncode}): "
                           f"{done.stderr.strip()}")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["_wall_secs"] = wall
    return manifest


def at_limit(requests: int, limit: int, share: float) -> float:
    """Minutes `requests` take at `share` of `limit` requests a minute."""
    return requests / (limit * share)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--created-pct", type=float, default=0.5)
    parser.add_argument("--active-pct", type=float, default=0.5)
    parser.add_argument("--deleted", type=int, default=100)
    parser.add_argument("--edited-pct", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit", type=int, default=3000,
                        help="requests a minute the wall time at the limit is computed for")
    parser.add_argument("--share", type=float, default=0.9, help="--rate-share of the runs")
    parser.add_argument("--rate-limit", type=int, default=None,
                        help="also enforce this limit on the fake and tell the exporter")
    parser.add_argument("--reference", action="store_true",
                        help="also run a full export every night (its requests, not estimated)")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--binary", type=Path, default=None,
                        help="the chatwoot-export to run (default: target/release, else debug)")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another build to run night 1's incremental run with (repeatable)")
    args = parser.parse_args()

    exe = args.binary or binary()
    server = FakeServer(exe, args.contacts, args.seed, args.rate_limit)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="cw-incremental-") as work:
            snapshot = Path(work) / "snapshot"
            # --full: a plain export keeps nothing for the next run to build on.
            base = export(exe, server.url, snapshot, ["--full"], args.rate_limit)
            full_requests = base["requests"]
            rows.append(("base (full)", base["unique_contacts"], full_requests, None, None,
                         base["_wall_secs"], full_requests, base["_wall_secs"]))
            full_wall = base["_wall_secs"]
            for night in range(1, args.days + 1):
                live = base["unique_contacts"]
                deleted_new = args.deleted // 10
                report = server.day({
                    "created": round(live * args.created_pct / 100),
                    "active": round(live * args.active_pct / 100),
                    "deleted_old": args.deleted - deleted_new,
                    "deleted_new": deleted_new,
                    "edited": round(live * args.edited_pct / 100),
                })
                if night == 1:
                    for other in args.also:
                        # A fresh window of the limit for each, and the same base.
                        time.sleep(65 if args.rate_limit else 0)
                        copy = Path(work) / f"also-{other.name}"
                        shutil.copytree(snapshot, copy)
                        theirs = export(other, server.url, copy, ["--incremental"],
                                        args.rate_limit)
                        snap = theirs.get("snapshot") or {}
                        rows.append((f"night 1 incremental ({other})", theirs["unique_contacts"],
                                     theirs["requests"], snap.get("requests_predicted"), None,
                                     theirs["_wall_secs"], full_requests, base["_wall_secs"]))
                    time.sleep(65 if args.rate_limit else 0)
                ours = export(exe, server.url, snapshot, ["--incremental"], args.rate_limit)
                if ours.get("mode") != "incremental":
                    raise RuntimeError(f"night {night} was not incremental: {ours.get('mode')}")
                reference = full_requests
                if args.reference:
                    full = export(exe, server.url, Path(work) / f"full-{night}", [],
                                  args.rate_limit)
                    reference = full["requests"]
                    rows.append((f"night {night} full", full["unique_contacts"], reference, None,
                                 None, full["_wall_secs"], reference, full["_wall_secs"]))
                    full_wall = full["_wall_secs"]
                snap = ours.get("snapshot") or {}
                rows.append((f"night {night} incremental", ours["unique_contacts"],
                             ours["requests"], snap.get("requests_predicted"),
                             len(report["deleted"]), ours["_wall_secs"], reference, full_wall))
                base = ours
    finally:
        server.stop()

    lines = [
        f"{args.contacts:,} contacts; a day: {args.created_pct}% created, {args.active_pct}% "
        f"active, {args.deleted} deleted, {args.edited_pct}% silently edited. Wall time at the "
        f"limit: requests / ({args.limit:,} a minute x {args.share}). Binary: "
        f"{exe.name} ({'debug' if 'debug' in str(exe) else 'release'}).",
        "",
        "| run | contacts | requests | predicted | % of a full run's requests | measured wall s "
        "| % of a full run's wall | minutes at the limit, from the requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, contacts, requests, predicted, _deleted, wall, reference, ref_wall in rows:
        share = 100 * requests / reference if reference else 0
        lines.append(
            f"| {name} | {contacts:,} | {requests:,} | "
            f"{'' if predicted is None else f'{predicted:,}'} | {share:.2f}% | {wall:.1f} | "
            f"{100 * wall / ref_wall:.2f}% | {at_limit(requests, args.limit, args.share):.2f} |")
    nights = [r for r in rows if r[0].startswith("night") and r[0].endswith("incremental")]
    worst = max((100 * r[2] / r[6] for r in nights), default=float("inf"))
    worst_wall = max((100 * r[5] / r[7] for r in nights), default=float("inf"))
    paced = "at the limit" if args.rate_limit else "unpaced (no --rate-limit: not the target's)"
    lines += ["", f"Target (issue 19): an incremental run at most 3% of a full run's requests "
                  f"and wall time at the limit. Worst night: {worst:.2f}% of the requests "
                  f"({'met' if worst <= 3 else 'not met'}), {worst_wall:.2f}% of the wall time, "
                  f"{paced}."]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
