"""Every way into confledger: HTTP routes, FastAPI lifecycle wiring, SIGHUP, the CLI and telemetry."""
