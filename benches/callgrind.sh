#!/usr/bin/env bash
# Instructions the exporter spends per contact, from valgrind's callgrind: stable where wall and
# CPU times are not (a shared machine). Starts the fake server (its own process, stopped by its
# PID), exports N contacts to Parquet under callgrind, prints instructions per contact and the
# stages' inclusive shares. Not part of CI.
#
#   benches/callgrind.sh [BINARY] [CONTACTS]     # defaults: target/release/chatwoot-export 20000
#   callgrind_annotate --inclusive=yes target/callgrind.out | less   # the whole profile
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/chatwoot-export}
contacts=${2:-20000}
out=target/callgrind.out
work=$(mktemp -d)
"$bin" fake-server --port 0 --contacts "$contacts" > "$work/url" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -s "$work/url" ] && break; sleep 0.1; done
CHATWOOT_API_TOKEN=fake-token valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" contacts --base-url "$(head -1 "$work/url")" --account-id 1 --out "$work/out" \
    --no-progress --rate-limit 0 2> "$work/log"
total=$(grep "Collected" "$work/log" | tail -1 | awk '{print $4}' | tr -d ,)
echo "$total instructions, $((total / contacts)) per contact"
callgrind_annotate --inclusive=yes "$out" 2>/dev/null \
    | grep -E "Collector::add|write_tables|ContactsPage::from_body|ContactsClient::page::" \
    | cut -c1-110
