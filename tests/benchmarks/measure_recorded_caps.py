"""What one bad file costs the log and a history page: the issue's 100,000-key ``.env``, dry-run six times.

    python tests/benchmarks/measure_recorded_caps.py [--runs 6] [--keys 100000]

The real app (``tests/integration/api/service_harness``) runs on a fresh SQLite file with the
interpreter's installed confledger, so the same script measures any version: run it with another
checkout's virtualenv to compare. Printed: the largest ``validation.failed`` payload, the database file
(with its WAL) after the runs, and the body of ``GET /history?limit=20``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.api.service_harness import serving  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--keys", type=int, default=100_000)
    options = parser.parse_args()
    logging.getLogger("confledger").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        database = root / "log.db"
        with serving(root, f"sqlite:///{database}") as service:
            source = service.source.parent / "bad.env"
            source.write_text("".join(f"K{n:05d}=1\n" for n in range(options.keys)), encoding="utf-8")
            head = service.log.head()
            for _ in range(options.runs):
                response = service.post("/reload", json={"config_source": "bad.env", "dry_run": True})
                assert response.status_code == 200, response.text
            largest = max(
                len(json.dumps(event.payload.model_dump(mode="json")))
                for event in service.log.read(head)
                if event.type == "validation.failed"
            )
            history = service.get("/history", params={"limit": 20})
            on_disk = sum(path.stat().st_size for path in root.glob("log.db*"))
        print(
            f".env of {options.keys:,} unknown keys ({source.stat().st_size:,} bytes), {options.runs} dry runs: "
            f"largest validation.failed {largest:,} bytes; database {on_disk:,} bytes; "
            f"/history?limit=20 {len(history.content):,} bytes"
        )


if __name__ == "__main__":
    main()
