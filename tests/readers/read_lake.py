"""Reads a Hive-partitioned lake written by `chatwoot-export run` with the engines analysts use
(Spark, DuckDB, Polars, pandas, pyarrow) exactly as docs/guide.md tells them to, and checks
each one against the manifests and the fake server's truth (tests/it/engines.rs).

    read_lake.py ONE_NIGHT_LAKE TWO_NIGHT_LAKE CSV_LAKE SNAKE_LAKE TRUTH.json

- ONE_NIGHT_LAKE (Parquet, one run): every engine reads `contacts` with NO options.
- TWO_NIGHT_LAKE (Parquet, two runs whose accounts differ, the second run twice): every engine
  reads it with the one schema option the guide gives (Spark `mergeSchema`, DuckDB
  `union_by_name`, Polars `how="diagonal_relaxed"`, pyarrow/pandas a unified schema).
- CSV_LAKE (CSV, one run): Spark (header, multiLine, escape) and DuckDB `read_csv`.
- SNAKE_LAKE (Parquet, one run, `column_names = "snake"`): Spark SQL selects every column
  by name without backticks; values are checked through the manifest's `source_name`s.

Every read must give: every column any manifest lists plus the typed partition columns
(account_id an integer, dt a date), exactly the rows the manifests count (no file read twice,
none missed), and each account's (id, email) pairs and custom attribute values as the truth has
them. Within one run every file of a table must have the same schema (or CSV header).
Prints one `ok ENGINE CHECK` line per check; the first failure raises.
"""

from __future__ import annotations

import datetime as dt
import decimal
import glob
import json
import os
import sys

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

PARTITION_SCHEMA = pa.schema([("account_id", pa.int64()), ("dt", pa.date32())])
# The guide's pyarrow/pandas partitioning: typed partition columns.
PARTITIONING = ds.partitioning(PARTITION_SCHEMA, flavor="hive")


def manifests(lake: str, table: str) -> list[dict]:
    found = []
    for path in glob.glob(f"{lake}/_chatwoot_export/{table}/**/manifest.json", recursive=True):
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        parts = dict(p.split("=", 1) for p in manifest["partition"].split("/") if "=" in p)
        found.append({"account_id": int(parts["account_id"]), "dt": parts["dt"], "m": manifest})
    assert found, f"no manifests in {lake}"
    return found


def expected(lake: str, table: str):
    """The columns every manifest lists (with each one's original name), and rows per
    partition."""
    found = manifests(lake, table)
    columns = {}
    for entry in found:
        for column in entry["m"]["tables"][table]["columns"]:
            columns.setdefault(column["name"], column.get("source_name", column["name"]))
    rows = {(e["account_id"], e["dt"]): e["m"]["tables"][table]["rows"] for e in found}
    return columns, rows


class Checker:
    def __init__(self, truth: dict):
        # account id (text) -> {"emails": {id: email}, "custom": {column: {id: value}}}
        self.truth = truth

    def check(self, engine: str, what: str, rows: list[dict], columns: list[str], lake: str,
              table: str, csv: bool = False) -> None:
        want_columns, want_rows = expected(lake, table)
        missing = [c for c in list(want_columns) + ["account_id", "dt"] if c not in columns]
        assert not missing, f"{engine} {what}: columns missing: {missing}"
        got: dict[tuple, int] = {}
        for row in rows:
            day = row["dt"]
            assert isinstance(day, dt.date), f"{engine} {what}: dt is {type(day).__name__}"
            account = row["account_id"]
            assert isinstance(account, int), f"{engine} {what}: account_id is {type(account)}"
            key = (account, day.isoformat())
            got[key] = got.get(key, 0) + 1
        assert got == want_rows, f"{engine} {what}: rows per partition {got} != manifests {want_rows}"
        for row in rows:
            truth = self.truth[str(row["account_id"])]
            contact = str(int(row["id"]))
            email = truth["emails"].get(contact)
            assert row["email"] == email, f"{engine} {what}: contact {contact} email {row['email']!r} != {email!r}"
            for column, original in want_columns.items():
                if not original.startswith("custom_attributes__"):
                    continue
                value = row.get(column)
                truth_value = truth["custom"].get(original, {}).get(contact)
                if truth_value is None:
                    assert value is None or value == "", (
                        f"{engine} {what}: {column} of {contact} (account {row['account_id']}) "
                        f"should be null, is {value!r}")
                elif isinstance(truth_value, str) and not csv:
                    assert same(value, truth_value), (
                        f"{engine} {what}: {column} of {contact}: {value!r} != {truth_value!r}")
        print(f"ok {engine} {what}", flush=True)


def same(value, text: str) -> bool:
    """Whether a typed value read back is the text the server sent: a decimal or date
    attribute arrives as text and is typed by its definition."""
    if str(value) == text:
        return True
    if isinstance(value, (decimal.Decimal, float, int)) and not isinstance(value, bool):
        try:
            return decimal.Decimal(str(value)) == decimal.Decimal(text)
        except decimal.InvalidOperation:
            return False
    if isinstance(value, dt.datetime):
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value == parsed
    return False


def as_rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def one_schema_per_run(lake: str, table: str, csv: bool = False) -> None:
    """Every file of `table` in one night has the same schema (Parquet) or header (CSV)."""
    by_night: dict[str, set] = {}
    for path in glob.glob(f"{lake}/{table}/**/*.{'csv' if csv else 'parquet'}", recursive=True):
        night = [p for p in path.split(os.sep) if p.startswith("dt=")][0]
        if csv:
            with open(path, encoding="utf-8") as f:
                shape = f.readline()
        else:
            shape = str(pq.read_schema(path).remove_metadata())
        by_night.setdefault(night, set()).add(shape)
    assert by_night, f"no files in {lake}/{table}"
    for night, shapes in by_night.items():
        assert len(shapes) == 1, f"{lake} {night}: {len(shapes)} different schemas in one run"
    print(f"ok files one-schema-per-run {os.path.basename(lake)}", flush=True)


def spark_session():
    # Loopback only: the driver and its block manager listen on 127.0.0.1.
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master("local[1]").appName("read_lake")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate())


def spark_rows(frame) -> tuple[list[dict], list[str]]:
    return [r.asDict() for r in frame.collect()], frame.columns


def main() -> None:
    one, two, csv_lake, snake, truth_path = sys.argv[1:6]
    with open(truth_path, encoding="utf-8") as f:
        checker = Checker(json.load(f))
    t = "contacts"
    one_schema_per_run(one, t)
    one_schema_per_run(two, t)
    one_schema_per_run(csv_lake, t, csv=True)

    # --- No options: one run, one schema.
    table = duckdb.sql(f"SELECT * FROM read_parquet('{one}/{t}/**/*.parquet')").to_arrow_table()
    checker.check("duckdb", "one-run no options", as_rows(table), table.column_names, one, t)
    frame = pl.read_parquet(f"{one}/{t}/")
    checker.check("polars", "one-run no options", frame.to_dicts(), frame.columns, one, t)
    table = ds.dataset(f"{one}/{t}", format="parquet", partitioning=PARTITIONING).to_table()
    checker.check("pyarrow", "one-run no options", as_rows(table), table.column_names, one, t)
    frame = pd.read_parquet(f"{one}/{t}", partitioning=PARTITIONING, dtype_backend="pyarrow")
    rows = [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in frame.to_dict("records")]
    checker.check("pandas", "one-run no options", rows, list(frame.columns), one, t)

    # --- Two nights whose schemas differ: the one option each engine needs.
    table = duckdb.sql(f"SELECT * FROM read_parquet('{two}/{t}/**/*.parquet', union_by_name = true)").to_arrow_table()
    checker.check("duckdb", "two nights union_by_name", as_rows(table), table.column_names, two, t)
    files = sorted(glob.glob(f"{two}/{t}/**/*.parquet", recursive=True))
    frame = pl.concat([pl.read_parquet(f, hive_partitioning=True) for f in files],
                      how="diagonal_relaxed")
    checker.check("polars", "two nights diagonal_relaxed", frame.to_dicts(), frame.columns, two, t)
    unified = pa.unify_schemas([pq.read_schema(f) for f in files] + [PARTITION_SCHEMA])
    table = ds.dataset(f"{two}/{t}", format="parquet", partitioning=PARTITIONING,
                       schema=unified).to_table()
    checker.check("pyarrow", "two nights unified schema", as_rows(table), table.column_names, two, t)
    frame = pd.read_parquet(f"{two}/{t}", partitioning=PARTITIONING, schema=unified,
                            dtype_backend="pyarrow")
    rows = [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in frame.to_dict("records")]
    checker.check("pandas", "two nights unified schema", rows, list(frame.columns), two, t)

    # --- CSV, one run: one header, so engines that map by position are right.
    table = duckdb.sql(f"SELECT * FROM read_csv('{csv_lake}/{t}/**/*.csv', hive_partitioning = true)").to_arrow_table()
    checker.check("duckdb", "csv one run", as_rows(table), table.column_names, csv_lake, t, csv=True)

    spark = spark_session()
    try:
        rows, columns = spark_rows(spark.read.parquet(f"{one}/{t}"))
        checker.check("spark", "one-run no options", rows, columns, one, t)
        rows, columns = spark_rows(spark.read.option("mergeSchema", "true").parquet(f"{two}/{t}"))
        checker.check("spark", "two nights mergeSchema", rows, columns, two, t)
        frame = (spark.read.option("header", "true").option("multiLine", "true")
                 .option("escape", '"').csv(f"{csv_lake}/{t}"))
        rows, columns = spark_rows(frame)
        checker.check("spark", "csv one run", rows, columns, csv_lake, t, csv=True)
        spark.read.parquet(f"{snake}/{t}").createOrReplaceTempView("contacts")
        names, _ = expected(snake, t)
        renamed = [n for n, original in names.items() if n != original]
        assert renamed, "snake names renamed no column: the lake proves nothing"
        # Every column by its bare name: a name Spark SQL cannot take unquoted fails to parse.
        frame = spark.sql(f"SELECT {', '.join(list(names) + ['account_id', 'dt'])} FROM contacts")
        rows, columns = spark_rows(frame)
        checker.check("spark", "snake names in SQL without backticks", rows, columns, snake, t)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
