#!/usr/bin/env python3
"""The same export with dlt, for the side-by-side benchmark (benches/e2e.py runs it).

dlt's `rest_api` source walks `GET /api/v1/accounts/{id}/contacts` with a page-number paginator
(pages from 1, no total in the response: stop at the first empty page), sends the token in the
`api_access_token` header, and loads the contacts (and dlt's child table
`contacts__contact_inboxes`) as Parquet into a local filesystem destination. That is dlt's
documented way to export this API; nothing is tuned for speed beyond its defaults.

    CHATWOOT_API_TOKEN=fake-token target/dlt-venv/bin/python benches/dlt_export.py \\
        --base-url http://127.0.0.1:3000 --account-id 1 --out /tmp/dlt-export

Prints `rows: contacts=N contact_inboxes=M` (from dlt's normalize step) when done.
Versions are pinned in benches/requirements-dlt.txt. Not part of CI.
"""

import argparse
import os
import tempfile
from pathlib import Path

import dlt
from dlt.sources.helpers.rest_client.paginators import PageNumberPaginator
from dlt.sources.rest_api import rest_api_source


def main() -> None:
    parser = argparse.ArgumentParser(description="Export Chatwoot contacts with dlt")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--account-id", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="filesystem destination folder")
    args = parser.parse_args()
    token = os.environ["CHATWOOT_API_TOKEN"]

    source = rest_api_source(
        {
            "client": {
                "base_url": args.base_url.rstrip("/") + "/",
                "headers": {"api_access_token": token},
                # Chatwoot answers {"meta": {"count": N, "current_page": "2"}, "payload": [...]}:
                # no page total (meta.count counts contacts), so stop on the empty page.
                "paginator": PageNumberPaginator(
                    base_page=1,
                    page_param="page",
                    total_path=None,
                    stop_after_empty_page=True,
                ),
            },
            "resources": [
                {
                    "name": "contacts",
                    "endpoint": {
                        "path": f"api/v1/accounts/{args.account_id}/contacts",
                        "params": {"sort": "created_at"},
                        "data_selector": "payload",
                    },
                    "write_disposition": "replace",
                },
            ],
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dlt-pipelines-") as pipelines_dir:
        pipeline = dlt.pipeline(
            pipeline_name="chatwoot_contacts",
            pipelines_dir=pipelines_dir,
            destination=dlt.destinations.filesystem(bucket_url=args.out.resolve().as_uri()),
            dataset_name="chatwoot",
            progress="log" if os.environ.get("DLT_PROGRESS") else None,
        )
        pipeline.run(source, loader_file_format="parquet")
        counts = pipeline.last_trace.last_normalize_info.row_counts
    print(
        f"rows: contacts={counts.get('contacts', 0)} "
        f"contact_inboxes={counts.get('contacts__contact_inboxes', 0)}"
    )


if __name__ == "__main__":
    main()
