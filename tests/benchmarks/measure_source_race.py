"""How a client-named ``config_source`` fares while a directory in its path is swapped for a symlink.

    python tests/benchmarks/measure_source_race.py [--requests N] [--rounds R]

The real app (``tests/integration/api/service_harness``) runs with the interpreter's installed
confledger, so the same script measures any version: run it with another checkout's virtualenv to
compare. A thread exchanges ``conf/sub`` (a directory holding ``app.yaml``) with ``conf/swap`` (a link to
a directory outside holding another valid ``app.yaml``) through ``renameat2(RENAME_EXCHANGE)`` in a loop,
while N reload requests name ``sub/app.yaml``. Printed: how many requests loaded the inside file, loaded
the OUTSIDE file (recorded under the inside path), were refused (403, by name or at the opened file),
failed otherwise (200, success false), or answered 500. Each round is a fresh SQLite log.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confledger.store.events import ConfigLoaded  # noqa: E402
from tests.integration.api.service_harness import serving, variant, write_config  # noqa: E402
from tests.integration.api.test_source_race import RENAMEAT2  # noqa: E402


def measure(database_url: str, requests: int) -> dict[str, int]:
    assert RENAMEAT2 is not None, "renameat2 is Linux-only"
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        with serving(root, database_url, raise_server_exceptions=False) as service:
            conf, outside = service.source.parent, root / "outside"
            for folder in (conf / "sub", outside):
                folder.mkdir()
            write_config(conf / "sub" / "app.yaml", variant(environment="staging"))
            write_config(outside / "app.yaml", variant(environment="production"))
            inside_sha = hashlib.sha256((conf / "sub" / "app.yaml").read_bytes()).hexdigest()
            outside_sha = hashlib.sha256((outside / "app.yaml").read_bytes()).hexdigest()
            (conf / "swap").symlink_to(outside, target_is_directory=True)
            first, second = os.fsencode(conf / "sub"), os.fsencode(conf / "swap")
            stop, swaps = threading.Event(), Counter[str]()

            def swap() -> None:
                while not stop.is_set():
                    RENAMEAT2(first, second)
                    swaps["swaps"] += 1

            thread = threading.Thread(target=swap, daemon=True)
            head = service.log.head()
            answers: Counter[str] = Counter()
            thread.start()
            try:
                for _ in range(requests):
                    response = service.post("/reload", json={"config_source": "sub/app.yaml"})
                    answers[str(response.status_code)] += 1
            finally:
                stop.set()
                thread.join()
            loads = Counter(
                event.payload.input_sha256
                for event in service.log.read(head)
                if isinstance(event.payload, ConfigLoaded)
            )
            return {
                "requests": requests,
                "swaps": swaps["swaps"],
                "loaded inside": loads[inside_sha],
                "loaded OUTSIDE": loads[outside_sha],
                "403": answers["403"],
                "200": answers["200"],
                "500": answers["500"],
            }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    logging.getLogger("confledger").setLevel(logging.ERROR)  # one warning per refused reload otherwise
    for round_number in range(options.rounds):
        with tempfile.TemporaryDirectory() as directory:
            figures = measure(f"sqlite:///{Path(directory) / 'log.db'}", options.requests)
        print(f"round {round_number + 1}:", ", ".join(f"{key}: {value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
