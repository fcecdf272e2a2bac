#!/usr/bin/env bash
# The test command (README quick start): formatting, lints, then every test, including the
# independent pyarrow/DuckDB/Polars readers and the S3 (moto) and Azure Blob (Azurite) servers, which
# run from a virtualenv and a node_modules under target/ so nothing is installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p target
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
export PYTHON="$PWD/$venv/bin/python"

# Azurite, an Azure Blob server on loopback for the object store tests, from the npm registry
# (pinned with its dependencies in tests/package-lock.json), also under target/.
if ! command -v npm >/dev/null; then
    echo "tests/run.sh: npm (Node.js 18 or later) is needed for the Azure Blob tests: apt-get install nodejs npm" >&2
    exit 1
fi
node_dir=target/test-node
if ! cmp -s tests/package-lock.json "$node_dir/package-lock.json" \
    || [ ! -x "$node_dir/node_modules/.bin/azurite-blob" ]; then
    mkdir -p "$node_dir"
    cp tests/package.json tests/package-lock.json "$node_dir/"
    npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
fi
export AZURITE="$PWD/$node_dir/node_modules/.bin/azurite-blob"

# The real rate limiters of tests/it/limiters.rs, from Debian's packages (.ci/run installs them).
for program in redis-server puma nginx; do
    if ! PATH="$PATH:/usr/sbin" command -v "$program" >/dev/null; then
        echo "tests/run.sh: $program is needed for the rate limiter tests: apt-get install ruby-rack-attack puma redis-server ruby-redis nginx" >&2
        exit 1
    fi
done

# No import circles between the crate's files (issue 16): stdlib Python, before anything builds.
python3 tests/import_cycles.py src
# Every relative link and #anchor of the Markdown docs resolves (README, docs/, benches/).
python3 scripts/check-doc-links.py
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
