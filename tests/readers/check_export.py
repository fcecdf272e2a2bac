#!/usr/bin/env python3
"""Independent reader check for chatwoot-export output.

An analyst will open the export with pyarrow, DuckDB or a CSV/JSON reader and
trust what they see. This script plays that analyst: it re-derives, in plain
Python and without any code from the Rust project, what every cell should hold
(flattening the raw Chatwoot contacts of the fake account and typing columns the
way the output contract describes: custom attributes from the account's attribute
definitions, everything else from its values), then reads the export with
standard readers and compares every value of every row and column.

  parquet: pyarrow.parquet (schema types and values), DuckDB read_parquet and Polars
           read_parquet (its own Parquet reader; schema types and values)
  csv:     Python's csv module and DuckDB read_csv(all_varchar) (text values)
  ndjson:  json.loads per line (values, every column present) and DuckDB read_json

It also checks manifest.json (complete, counts, column names and types, every file listed),
and for Parquet that every column chunk of every file uses the codec the manifest records.

Usage: check_export.py --dir DIR --format parquet|csv|ndjson --truth TRUTH.ndjson
                       --definitions DEFINITIONS.json
Exit 0 when everything agrees, 1 on any mismatch, 2 when a reader is missing.
"""
import argparse
import csv
import json
import math
import os
import sys
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

try:
    import duckdb
    import polars
    import pyarrow
    import pyarrow.parquet as pq
except ImportError as e:
    print(f"check_export: {e}; run: pip install -r tests/requirements.txt", file=sys.stderr)
    sys.exit(2)

CONTACT_COLS = ["id", "name", "email", "phone_number", "identifier", "thumbnail",
                "availability_status", "blocked", "conversations_count",
                "created_at", "last_activity_at"]
CONTACT_TYPES = {"id": "int64", "blocked": "boolean", "conversations_count": "int64",
                 "created_at": "timestamp", "last_activity_at": "timestamp"}
INBOX_COLS = ["contact_id", "source_id", "inbox__id", "inbox__avatar_url",
              "inbox__channel_id", "inbox__name", "inbox__channel_type", "inbox__provider"]
NESTED = ("additional_attributes", "custom_attributes", "contact_inboxes")
DECIMAL = "decimal(38,18)"
ARROW_TYPES = {"int64": "int64", "float64": "double", DECIMAL: "decimal128(38, 18)", "boolean": "bool",
               "timestamp": "timestamp[us, tz=UTC]", "string": "string"}
POLARS_TYPES = {"int64": polars.Int64, "float64": polars.Float64, DECIMAL: polars.Decimal(38, 18),
                "boolean": polars.Boolean,
                "timestamp": polars.Datetime("us", "UTC"), "string": polars.String}
MAX_REPORT = 20
MISSING = object()


class Json:
    """A value the export writes as JSON text (an object or array, or a
    non-string scalar in a string column); compared after json.loads."""
    def __init__(self, value):
        self.value = value


def flatten(obj, prefix, out):
    """Recursive flattening: nested objects join keys with '__', arrays become JSON text."""
    for key, value in obj.items():
        if isinstance(value, dict):
            flatten(value, f"{prefix}{key}__", out)
        else:
            out[prefix + key] = Json(value) if isinstance(value, list) else value


def flatten_contact(c):
    row = {k: c.get(k) for k in CONTACT_COLS}
    extra = {k: (Json(v) if isinstance(v, (dict, list)) else v)
             for k, v in c.items() if k not in CONTACT_COLS and k not in NESTED}
    row.update(sorted(extra.items()))
    aa, ca = {}, {}
    flatten(c.get("additional_attributes") or {}, "additional_attributes__", aa)
    for key, value in (c.get("custom_attributes") or {}).items():
        ca["custom_attributes__" + key] = Json(value) if isinstance(value, (dict, list)) else value
    return row, extra, aa, ca


def infer_type(values):
    kinds = {("bool" if isinstance(v, bool) else "int" if isinstance(v, int)
              else "float" if isinstance(v, float) else "other")
             for v in values if v is not None}
    if kinds == {"bool"}:
        return "boolean"
    if kinds == {"int"}:
        return "int64"
    if kinds and kinds <= {"int", "float"}:
        return "float64"
    return "string"


DEFINED_TYPES = {"number": DECIMAL, "currency": DECIMAL, "percent": DECIMAL,
                 "checkbox": "boolean", "date": "timestamp",
                 "text": "string", "link": "string", "list": "string"}
NUMBER_CHARS = set("0123456789+-.eE")


def number_text(text):
    """A decimal number written as text (" 12.50 "), else None (blank text too)."""
    text = text.strip()
    if not text or not set(text) <= NUMBER_CHARS:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def exact_decimal(v):
    """The exact value of a number or of number text as Decimal(38, 18) holds it, else None
    (blank text too). Floats come from the truth as Python's shortest repr, which is the text
    the fake server sent."""
    if isinstance(v, bool):
        return None
    try:
        d = Decimal(v.strip()) if isinstance(v, str) else Decimal(str(v))
    except InvalidOperation:
        return None
    if isinstance(v, str) and number_text(v) is None:
        return None
    if not d.is_finite():
        return None
    sign, digits, exp = d.normalize().as_tuple() if d else (0, (0,), 0)
    if -exp > 18 or len(digits) + exp > 20:
        return None
    return d


def iso_time(text):
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None and "T" in text else None


def fits(t, v):
    """Whether value v can be written in a column its definition typed t."""
    if v is None or t == "string":
        return True
    if isinstance(v, Json):
        return False
    if t == "boolean":
        return isinstance(v, bool)
    if t == DECIMAL:
        return (isinstance(v, str) and not v.strip()) or exact_decimal(v) is not None
    if t == "timestamp":  # text only: a number in a date attribute is not guessed at
        return isinstance(v, str) and iso_time(v) is not None
    return False


def defined_types(definitions_path, rows):
    """Column types of the contact attributes the account defines: the definition's
    type when every value fits it, else string."""
    with open(definitions_path, encoding="utf-8") as f:
        definitions = json.load(f)
    types = {}
    for d in definitions:
        t = DEFINED_TYPES.get(d.get("attribute_display_type"))
        if d.get("attribute_model") != "contact_attribute" or t is None:
            continue
        col = "custom_attributes__" + d["attribute_key"]
        types[col] = t if all(fits(t, r.get(col)) for r in rows) else "string"
    return types


def build_table(rows, first_cols, fixed_types, later_cols):
    """Column order, types and typed expected rows (None = null)."""
    cols = first_cols + later_cols
    types = {c: fixed_types.get(c) or infer_type(r.get(c) for r in rows) for c in cols}
    expected = []
    for r in rows:
        out = {}
        for c in cols:
            v, t = r.get(c), types[c]
            if v is None or (isinstance(v, Json) and v.value is None):
                out[c] = None
            elif t == "timestamp" and isinstance(v, int):
                out[c] = datetime.fromtimestamp(v, timezone.utc)
            elif t == "timestamp" and isinstance(v, str):
                out[c] = iso_time(v).astimezone(timezone.utc)
            elif t == DECIMAL:
                out[c] = exact_decimal(v)  # blank text in a number attribute is null
            elif t == "float64":
                out[c] = float(v)
            elif t == "string" and not isinstance(v, (str, Json)):
                out[c] = Json(v)  # mixed column: 5 -> "5", true -> "true"
            else:
                out[c] = v
        expected.append(out)
    return cols, types, expected


def expected_tables(truth_path, definitions_path):
    contacts = [json.loads(line) for line in open(truth_path, encoding="utf-8") if line.strip()]
    seen, flat, inbox_rows = set(), [], []
    extra_cols, aa_cols, ca_cols = set(), set(), set()
    for c in contacts:
        if c["id"] in seen:
            continue
        seen.add(c["id"])
        row, extra, aa, ca = flatten_contact(c)
        row.update(aa)
        row.update(ca)
        flat.append(row)
        extra_cols |= extra.keys()
        aa_cols |= aa.keys()
        ca_cols |= ca.keys()
        for item in c.get("contact_inboxes") or []:
            link = {"contact_id": c["id"]}
            flatten(item, "", link)
            inbox_rows.append(link)
    defined = defined_types(definitions_path, flat)
    ca_cols |= defined.keys()
    by_bytes = str.encode  # UTF-8 byte order
    later = [c for cols in (extra_cols, aa_cols, ca_cols) for c in sorted(cols, key=by_bytes)]
    others = sorted({k for r in inbox_rows for k in r} - set(INBOX_COLS), key=by_bytes)
    return len(contacts), len(defined), {
        "contacts": build_table(flat, CONTACT_COLS, {**CONTACT_TYPES, **defined}, later),
        "contact_inboxes": build_table(inbox_rows, INBOX_COLS, {"contact_id": "int64"}, others),
    }


def strict_eq(a, b):
    """Equality that does not let True == 1 or 1 == 1.0 slip through."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_eq(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(strict_eq, a, b))
    return a == b


def parse_json(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return MISSING  # equal to nothing


def same_typed(exp, got, typ):
    """Compare with a typed reader (pyarrow, DuckDB, NDJSON)."""
    if exp is None or got is None:
        return exp is None and got is None
    if isinstance(exp, Json):
        return isinstance(got, str) and strict_eq(parse_json(got), exp.value)
    if typ == DECIMAL:  # exact: compared as decimals, never through a float
        return (isinstance(got, (int, Decimal)) or (isinstance(got, str) and got)) and \
            not isinstance(got, bool) and Decimal(got) == exp
    if typ == "float64":  # NDJSON is read with Decimal floats
        return isinstance(got, (int, float, Decimal)) and not isinstance(got, bool) and \
            float(got) == exp
    if typ == "timestamp" and isinstance(got, str):
        return got == exp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return type(got) is type(exp) and got == exp


def same_text(exp, got, typ):
    """Compare with a CSV cell: all text, and null and "" are both the empty field."""
    if exp is None or exp == "":
        return got in ("", None)
    if got is None:
        return False
    if isinstance(exp, Json):
        return strict_eq(parse_json(got), exp.value)
    if typ == DECIMAL:
        try:
            return Decimal(got) == exp
        except InvalidOperation:
            return False
    if typ == "float64":
        try:
            return float(got) == exp
        except ValueError:
            return False
    if typ == "timestamp":
        return got == exp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(exp, bool):
        return got == ("true" if exp else "false")
    return got == str(exp)


class Checker:
    def __init__(self):
        self.errors = []

    def fail(self, msg):
        self.errors.append(msg)

    def compare(self, reader, table, cols, types, expected, got_rows, same):
        if len(got_rows) != len(expected):
            self.fail(f"{reader} {table}: {len(got_rows)} rows, expected {len(expected)}")
        for i, (exp, got) in enumerate(zip(expected, got_rows)):
            for c in cols:
                g = got.get(c, MISSING)
                if g is MISSING or not same(exp[c], g, types[c]):
                    who = exp.get("id", exp.get("contact_id"))
                    shown = exp[c].value if isinstance(exp[c], Json) else exp[c]
                    g = "<no such column>" if g is MISSING else repr(g)
                    self.fail(f"{reader} {table} row {i} (contact {who}) column {c!r}: "
                              f"expected {shown!r}, got {g}")


def check_manifest(chk, man, fmt, n_truth, tables):
    if man.get("complete") is not True:
        chk.fail(f"manifest: complete is {man.get('complete')!r}")
    if man.get("format") != fmt:
        chk.fail(f"manifest: format {man.get('format')!r}, expected {fmt!r}")
    if man.get("expected_count") != n_truth:
        chk.fail(f"manifest: expected_count {man.get('expected_count')}, expected {n_truth}")
    n_unique = len(tables["contacts"][2])
    if man.get("unique_contacts") != n_unique:
        chk.fail(f"manifest: unique_contacts {man.get('unique_contacts')}, expected {n_unique}")
    for name, (cols, types, expected) in tables.items():
        t = man.get("tables", {}).get(name, {})
        if t.get("rows") != len(expected):
            chk.fail(f"manifest: {name}.rows {t.get('rows')}, expected {len(expected)}")
        got = [(c.get("name"), c.get("type")) for c in t.get("columns", [])]
        want = [(c, types[c]) for c in cols]
        if got != want:
            diff = [f"{g} != {w}" for g, w in zip(got, want) if g != w][:3]
            chk.fail(f"manifest: {name}.columns differ ({len(got)} vs {len(want)}): {diff}")


def read_parquet(chk, paths, name, cols, types, expected):
    table = pyarrow.concat_tables(pq.read_table(p) for p in paths)
    got_schema = [(f.name, str(f.type)) for f in table.schema]
    want_schema = [(c, ARROW_TYPES[types[c]]) for c in cols]
    if got_schema != want_schema:
        diff = [f"{g} != {w}" for g, w in zip(got_schema, want_schema) if g != w][:3]
        chk.fail(f"pyarrow {name}: schema differs ({len(got_schema)} vs {len(want_schema)}): {diff}")
    chk.compare("pyarrow", name, cols, types, expected, table.to_pylist(), same_typed)
    rel = duckdb.execute("SELECT * FROM read_parquet(?)", [paths])
    names = [d[0] for d in rel.description]
    chk.compare("duckdb", name, cols, types, expected,
                [dict(zip(names, r)) for r in rel.fetchall()], same_typed)
    frame = polars.read_parquet(paths)
    got_schema = list(frame.schema.items())
    want_schema = [(c, POLARS_TYPES[types[c]]) for c in cols]
    if got_schema != want_schema:
        diff = [f"{g} != {w}" for g, w in zip(got_schema, want_schema) if g != w][:3]
        chk.fail(f"polars {name}: schema differs ({len(got_schema)} vs {len(want_schema)}): {diff}")
    chk.compare("polars", name, cols, types, expected, frame.to_dicts(), same_typed)


CODECS = {"zstd": "ZSTD", "snappy": "SNAPPY", "none": "UNCOMPRESSED"}


def check_codec(chk, man, paths):
    """Every column chunk's codec, as pyarrow reads it, is the manifest's ("zstd:1" -> ZSTD)."""
    recorded = man.get("compression")
    want = CODECS.get((recorded or "").split(":")[0])
    if want is None:
        chk.fail(f"manifest: compression {recorded!r} is not a Parquet codec")
        return
    for p in paths:
        meta = pq.ParquetFile(p).metadata
        found = {meta.row_group(g).column(c).compression
                 for g in range(meta.num_row_groups) for c in range(meta.num_columns)}
        if found != {want}:
            chk.fail(f"{os.path.basename(p)}: codecs {sorted(found)}, manifest says {recorded!r}")


def read_csv(chk, paths, name, cols, types, expected):
    rows, header = [], None
    for p in paths:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows += [dict(zip(header, r)) for r in reader]
    if header != cols:
        chk.fail(f"csv {name}: header {header[:5]}... differs from expected {cols[:5]}...")
    chk.compare("csv-module", name, cols, types, expected, rows, same_text)
    rel = duckdb.execute("SELECT * FROM read_csv(?, header=true, all_varchar=true)", [paths])
    names = [d[0] for d in rel.description]
    chk.compare("duckdb", name, cols, types, expected,
                [dict(zip(names, r)) for r in rel.fetchall()], same_text)


def read_ndjson(chk, paths, name, cols, types, expected):
    rows = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            # parse_float=Decimal: a decimal column's digits, not a float's.
            rows += [json.loads(line, parse_float=Decimal) for line in f if line.strip()]
    bad = [i for i, r in enumerate(rows) if list(r) != cols]
    if bad:
        chk.fail(f"ndjson {name}: {len(bad)} lines (first: line {bad[0] + 1}) do not have "
                 f"exactly the expected keys in column order")
    chk.compare("ndjson", name, cols, types, expected, rows, same_typed)
    n = duckdb.execute("SELECT count(*) FROM read_json(?, format='newline_delimited')",
                       [paths]).fetchone()[0]
    if n != len(expected):
        chk.fail(f"duckdb read_json {name}: {n} rows, expected {len(expected)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--format", required=True, choices=["parquet", "csv", "ndjson"])
    ap.add_argument("--truth", required=True)
    ap.add_argument("--definitions", required=True)
    args = ap.parse_args()
    n_truth, n_defined, tables = expected_tables(args.truth, args.definitions)
    chk = Checker()
    try:
        with open(os.path.join(args.dir, "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        print(f"check_export: {args.format} FAILED: no readable manifest.json: {e}")
        return 1
    check_manifest(chk, manifest, args.format, n_truth, tables)
    if manifest.get("custom_attribute_definitions") != n_defined:
        chk.fail(f"manifest: custom_attribute_definitions "
                 f"{manifest.get('custom_attribute_definitions')!r}, expected {n_defined}")
    reader = {"parquet": read_parquet, "csv": read_csv, "ndjson": read_ndjson}[args.format]
    listed = {"manifest.json"}
    for name, (cols, types, expected) in tables.items():
        files = manifest.get("tables", {}).get(name, {}).get("files") or [f"{name}.{args.format}"]
        listed.update(files)
        paths = [os.path.join(args.dir, f) for f in files]
        try:
            reader(chk, paths, name, cols, types, expected)
            if args.format == "parquet":
                check_codec(chk, manifest, paths)
        except Exception as e:  # a reader refusing the file is a finding, not a crash
            chk.fail(f"{name}: reading {files} failed: {type(e).__name__}: {e}")
    # The raw contacts kept for the next incremental run, in the folder the manifest names.
    raw = (manifest.get("snapshot") or {}).get("raw_file")
    if raw:
        listed.add(raw.split("/")[0])
        if not os.path.isfile(os.path.join(args.dir, raw)):
            chk.fail(f"manifest: snapshot.raw_file {raw} is missing")
    stray = sorted(set(os.listdir(args.dir)) - listed)
    if stray:
        chk.fail(f"files in {args.dir} not listed in the manifest: {stray}")
    if args.format == "parquet":
        glob = os.path.join(args.dir, "contacts*.parquet")
        n = duckdb.execute("SELECT count(*) FROM read_parquet(?)", [glob]).fetchone()[0]
        if n != len(tables["contacts"][2]):
            chk.fail(f"duckdb glob {glob}: {n} rows, expected {len(tables['contacts'][2])}")
    if chk.errors:
        for msg in chk.errors[:MAX_REPORT]:
            print(f"check_export: MISMATCH {msg}")
        print(f"check_export: {args.format} FAILED: {len(chk.errors)} mismatches"
              + (f" (first {MAX_REPORT} shown)" if len(chk.errors) > MAX_REPORT else ""))
        return 1
    n_cols = sum(len(t[0]) for t in tables.values())
    readers = {"parquet": "pyarrow, duckdb and polars", "csv": "the csv module and duckdb",
               "ndjson": "json.loads and duckdb"}[args.format]
    print(f"check_export: {args.format} OK: {len(tables['contacts'][2])} contacts, "
          f"{len(tables['contact_inboxes'][2])} inbox links, {n_cols} columns checked by {readers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
