"""How soon a change reaches the clients of ``GET /api/v1/config/watch``, against the reload's own answer.

    .venv/bin/python tests/benchmarks/bench_watch.py [--changes N] [--clients 1,10,50]

A ``confledger serve`` process runs on a copy of ``examples/config.yaml``. For each number of watching
clients K (threads, each on its own streaming connection), N changes are made one after another through
``POST /reload``. Per change: the anchor is the reload's round trip (from sending the request to its
answer, which is sent once the change is committed and folded); the measure is the time from sending the
request until the last of the K clients has the change's event. Reported: p50 and p99 of both, in ms,
and their ratio (p50 of the measure over p50 of the anchor), one row per K.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

if __package__ in (None, ""):  # run as a script: make the ``tests`` package importable
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import free_port, unwind_on_sigterm

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
MODEL = "confledger.examples.app_config:AppConfig"
TOKEN = "bench-admin-token-0123456789abcdef"
CONFLEDGER = Path(sys.executable).parent / "confledger"
PREFIX = "/api/v1/config"


class Client(threading.Thread):
    """One watching client: the monotonic time each change (by its hash) arrived."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.stream("GET", self.base + PREFIX + "/watch", headers=headers, timeout=None) as response:
            self.ready.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrived = time.monotonic()
                    with self.lock:
                        self.arrived[json.loads(line[6:])["hash"]] = arrived


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(
    base: str, config: Path, changes: int, clients: int, start_at: int
) -> tuple[list[float], list[float]]:
    watchers = [Client(base) for _ in range(clients)]
    for watcher in watchers:
        watcher.start()
    for watcher in watchers:
        watcher.ready.wait(10)
    time.sleep(0.5)  # every subscription is in place before the first change
    body = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    anchor: list[float] = []
    delivered: list[float] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        for number in range(changes):
            # A new value each time (the model allows 1..500), so every change is a new hash.
            body["database"]["pool_size"] = 1 + (start_at + number) % 500
            temporary = config.with_name(".config.yaml.tmp")
            temporary.write_text(yaml.safe_dump(body), encoding="utf-8")
            os.replace(temporary, config)
            sent = time.monotonic()
            answer = http.post(PREFIX + "/reload", json={})
            answered = time.monotonic()
            assert answer.json()["success"], answer.text
            head = answer.json()["new_config_hash"]
            deadline = time.monotonic() + 10
            while True:
                arrivals = []
                for watcher in watchers:
                    with watcher.lock:
                        arrivals.append(watcher.arrived.get(head))
                if all(arrival is not None for arrival in arrivals):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"event {head} did not reach every client")
                time.sleep(0.0005)
            anchor.append((answered - sent) * 1000)
            delivered.append((max(a for a in arrivals if a is not None) - sent) * 1000)
    return anchor, delivered


def main() -> None:
    unwind_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100, help="per row; rows x changes below 500")
    parser.add_argument("--clients", default="1,10,50")
    arguments = parser.parse_args()
    counts = [int(part) for part in arguments.clients.split(",")]
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "config.yaml"
        config.write_bytes(EXAMPLE_CONFIG.read_bytes())
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("CONFLEDGER_")}
        environment["CONFLEDGER_ADMIN_TOKEN"] = TOKEN
        command = [str(CONFLEDGER), "serve", "--config", str(config), "--model", MODEL, "--port", str(port)]
        server = subprocess.Popen(
            command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the service did not start")
                time.sleep(0.1)
            print(f"{arguments.changes} changes per row; times from sending POST /reload, in ms")
            print(
                f"{'clients':>7} | {'answer p50':>10} {'answer p99':>10} | {'last event p50':>14} {'last event p99':>14} | ratio p50"
            )
            for index, clients in enumerate(counts):
                anchor, delivered = measure(
                    base, config, arguments.changes, clients, 1 + index * arguments.changes
                )
                ratio = statistics.median(delivered) / statistics.median(anchor)
                print(
                    f"{clients:>7} | {statistics.median(anchor):>10.2f} {percentile(anchor, 0.99):>10.2f} | "
                    f"{statistics.median(delivered):>14.2f} {percentile(delivered, 0.99):>14.2f} | {ratio:>8.2f}"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
