#!/usr/bin/env bash
# Compares the CPU of two exporter binaries (a change against its base) on one busy machine:
# both export the same fake account, turn about, RUNS times each, from one fake server (its own
# process, stopped by its PID), and the minimum and median user+sys CPU of each are printed with
# their ratio. Interleaving makes both see the same noise; the minimum is the least disturbed
# run. Not part of CI.
#
#   benches/ab.sh BASE_BINARY NEW_BINARY [CONTACTS] [RUNS]     # defaults: 100000 7
#   e.g. git worktree add /tmp/base main && (cd /tmp/base && cargo build --release)
#        benches/ab.sh /tmp/base/target/release/chatwoot-export target/release/chatwoot-export
set -euo pipefail
base=$1
new=$2
contacts=${3:-100000}
runs=${4:-7}
work=$(mktemp -d)
"$base" fake-server --port 0 --contacts "$contacts" > "$work/url" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -s "$work/url" ] && break; sleep 0.1; done
url=$(head -1 "$work/url")
for _ in $(seq "$runs"); do
    for which in base new; do
        bin=$base
        [ "$which" = new ] && bin=$new
        rm -rf "$work/out"
        CHATWOOT_API_TOKEN=fake-token /usr/bin/time -f "%U %S %M" -o "$work/time" \
            "$bin" contacts --base-url "$url" --account-id 1 --out "$work/out" \
            --no-progress --rate-limit 0 2> /dev/null
        echo "$which $(cat "$work/time")" >> "$work/runs"
    done
done
python3 - "$work/runs" "$contacts" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
per = 100_000 / int(sys.argv[2])
stats = {}
for which in ("base", "new"):
    cpu = [float(r[1]) + float(r[2]) for r in rows if r[0] == which]
    rss = max(int(r[3]) for r in rows if r[0] == which) / 1024
    stats[which] = (min(cpu), statistics.median(cpu))
    print(f"{which}: CPU s min {min(cpu):.3f} median {statistics.median(cpu):.3f} "
          f"({min(cpu) * per:.2f} per 100k at the minimum), peak RSS {rss:.1f} MB")
print(f"new / base: {stats['new'][0] / stats['base'][0]:.3f} at the minimum, "
      f"{stats['new'][1] / stats['base'][1]:.3f} at the median")
PY
