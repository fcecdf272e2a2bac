#!/usr/bin/env bash
# Builds the Python wheel that carries the chatwoot-export binary (pyproject.toml: maturin with
# bindings = "bin"), installs it into a fresh virtualenv and runs `chatwoot-export demo` from
# there, checking that the demo's manifest says complete with every contact. That is what
# `pip install`, `pipx install` or `uv tool install` of the wheel gives a user.
#
# Needs Python 3 with venv and the Rust toolchain; maturin comes from PyPI into a virtualenv
# under target/wheel/, where the wheel (target/wheel/dist/), the trial virtualenv and the demo's
# output go too; the compiled crates go where cargo puts them (target/release, or
# $CARGO_TARGET_DIR). The build is a release build, as long as `cargo build --release` the first
# time (23 minutes here: README, Install), so CI does not run this script.
set -euo pipefail
cd "$(dirname "$0")/.."

work=target/wheel
build_venv=$work/build-venv
try_venv=$work/try-venv
rm -rf "$work/dist" "$try_venv" "$work/demo"
mkdir -p "$work"

if [ ! -x "$build_venv/bin/maturin" ]; then
    python3 -m venv "$build_venv"
    "$build_venv/bin/pip" install --quiet --disable-pip-version-check "maturin==1.16.0"
fi
"$build_venv/bin/maturin" build --release --locked --out "$work/dist"

wheels=("$work"/dist/chatwoot_export-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    echo "build-wheel.sh: expected one wheel in $work/dist, found: ${wheels[*]}" >&2
    exit 1
fi
echo "build-wheel.sh: built ${wheels[0]} ($(du -h "${wheels[0]}" | cut -f1))"

# A fresh virtualenv, installed from the wheel alone (no index): the binary must be all it needs.
python3 -m venv "$try_venv"
"$try_venv/bin/pip" install --quiet --disable-pip-version-check --no-index "${wheels[0]}"
"$try_venv/bin/chatwoot-export" --version
"$try_venv/bin/chatwoot-export" demo --out "$work/demo" --no-progress

python3 - "$work/demo/manifest.json" <<'PY'
import json, sys
manifest = json.load(open(sys.argv[1]))
if manifest.get("complete") is not True or manifest.get("unique_contacts") != 1500:
    sys.exit(f"build-wheel.sh: the installed demo's manifest is not a complete export of 1500 contacts: "
             f"complete={manifest.get('complete')!r}, unique_contacts={manifest.get('unique_contacts')!r}")
print("build-wheel.sh: the wheel's chatwoot-export ran the demo: 1500 contacts, complete")
PY
