#!/usr/bin/env bash
# The test command (README quick start): formatting, lints, then every test, including the
# independent pyarrow/DuckDB readers, which run from a virtualenv under target/ so nothing is
# installed into the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p target
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
export PYTHON="$PWD/$venv/bin/python"

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
