"""Data pipeline with retries: extract (flaky, retried with exponential backoff), transform, stage the result in
a file (large data does not belong in a step result), then load it into SQLite in batches, idempotently.
The seed's ``DataPipelineWorkflow``, with a CSV file for the source, a directory for R2 and SQLite for D1."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

from stepstone import NonRetryableError, StepContext, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

HERE = Path(__file__).resolve().parent
BATCH = 100


def normalize(row: dict[str, str]) -> dict[str, Any]:
    return {"id": int(row["id"]), "name": row["name"].strip().title(), "amount": round(float(row["amount"]), 2)}


class DataPipelineWorkflow(WorkflowEntrypoint):
    """Params: ``{"source": "path/to/file.csv"}`` (relative to this project)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        source = HERE / event.payload["source"]

        @step.do(
            "extract data",
            config={"retries": {"limit": 10, "delay": "1 second", "backoff": "exponential"}, "timeout": "5 minutes"},
        )
        def extract(ctx: StepContext) -> list[dict[str, str]]:
            if ctx.attempt <= int(self.env.FLAKY_EXTRACTS):
                raise ConnectionError(f"source unavailable (attempt {ctx.attempt})")
            if not source.is_file():
                raise NonRetryableError(f"no such source: {source.name}")  # retrying will not help
            with source.open(newline="") as f:
                return list(csv.DictReader(f))

        raw = await extract()

        transformed = await step.do("transform data", lambda: [normalize(r) for r in raw])

        def store() -> dict[str, Any]:
            staging = HERE / self.env.STAGING
            staging.mkdir(parents=True, exist_ok=True)
            key = staging / f"{event.instance_id}.json"
            key.write_text(json.dumps(transformed))
            return {"key": str(key.relative_to(HERE)), "rows": len(transformed)}

        ref = await step.do("store transformed data", store)

        @step.do("load to database", config={"retries": {"limit": 5, "delay": "1 second", "backoff": "linear"}})
        def load() -> dict[str, int]:
            rows = json.loads((HERE / ref["key"]).read_text())
            path = HERE / self.env.WAREHOUSE
            path.parent.mkdir(parents=True, exist_ok=True)
            batches = 0
            with sqlite3.connect(path) as db:
                db.execute("CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, name TEXT, amount REAL)")
                for i in range(0, len(rows), BATCH):
                    batch = rows[i : i + BATCH]
                    # INSERT OR REPLACE: a retried load writes the same rows again, not twice.
                    db.executemany("INSERT OR REPLACE INTO records VALUES (:id, :name, :amount)", batch)
                    batches += 1
            return {"rows": len(rows), "batches": batches}

        loaded = await load()
        return {"extracted": len(raw), **loaded}
