#!/usr/bin/env bash
# What each stage of an export costs in CPU, by taking stages away: builds the exporter three
# times from HEAD in a temporary worktree (as is; with `no-write.patch`, which writes no
# tables; with that and `no-flatten.patch`, which neither flattens nor spills a contact, so
# only fetching, HTTP and the page scan are left), runs the three in turn RUNS times against
# one fake server (its own process, stopped by its PID), and prints each one's user+sys CPU
# per 100,000 contacts (minimum and median) and the differences: the stages' costs. The
# patches are in benches/stage-costs/; if one no longer applies, it says so and stops. Not
# part of CI. The first run builds everything once into target/stage-costs (about 5 minutes).
#
#   benches/stage-costs.sh [CONTACTS] [RUNS]     # defaults: 100000 9
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
contacts=${1:-100000}
runs=${2:-9}
work=$(mktemp -d)
tree="$work/tree"
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null || true
    git -C "$root" worktree remove --force "$tree" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
git worktree add --detach --quiet "$tree" HEAD
export CARGO_TARGET_DIR="$root/target/stage-costs"
build() {
    # A patched file's time is reset, so that cargo never takes an older build for this one.
    # The probes leave code unused; its warnings are noise, an error is shown whole.
    (cd "$tree" && touch src/pipeline/*.rs && cargo build --release --quiet) 2> "$work/build" \
        || { cat "$work/build"; exit 1; }
    cp "$CARGO_TARGET_DIR/release/chatwoot-export" "$work/$1"
}
build whole
git -C "$tree" apply "$root/benches/stage-costs/no-write.patch"
build no-write
git -C "$tree" apply "$root/benches/stage-costs/no-flatten.patch"
build fetch-only

"$work/whole" fake-server --port 0 --contacts "$contacts" > "$work/url" 2>/dev/null &
server=$!
for _ in $(seq 50); do [ -s "$work/url" ] && break; sleep 0.1; done
url=$(head -1 "$work/url")
for _ in $(seq "$runs"); do
    for variant in whole no-write fetch-only; do
        rm -rf "$work/out"
        CHATWOOT_API_TOKEN=fake-token /usr/bin/time -f "$variant %U %S" -a -o "$work/runs" \
            "$work/$variant" contacts --base-url "$url" --account-id 1 --out "$work/out" \
            --no-progress --rate-limit 0 2> /dev/null
    done
done
python3 - "$work/runs" "$contacts" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
per = 100_000 / int(sys.argv[2])
cpu = {}
for variant in ("whole", "no-write", "fetch-only"):
    runs = [(float(r[1]) + float(r[2])) * per for r in rows if r[0] == variant]
    cpu[variant] = (min(runs), statistics.median(runs))
    print(f"{variant:>10}: {cpu[variant][0]:.2f} CPU-s per 100k at the minimum, "
          f"{cpu[variant][1]:.2f} at the median")
def stage(name, a, b):
    print(f"{name}: {cpu[a][0] - cpu[b][0]:.2f} at the minimum, {cpu[a][1] - cpu[b][1]:.2f} at the median")
stage("writing the tables from the spill", "whole", "no-write")
stage("flattening, deduplicating and spilling", "no-write", "fetch-only")
print(f"fetching (HTTP, the runtime, the page scan, the kernel): {cpu['fetch-only'][0]:.2f} "
      f"at the minimum, {cpu['fetch-only'][1]:.2f} at the median")
PY
