"""Run every benchmark script in this folder, one after the other, and say where the figures
went. Each script prints its own figures and writes ``bench/results-<name>.json``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("link_drain.py", "daemon_drain.py", "unlock_latency.py", "unlock_latency_e2e.py")


def main() -> int:
    failed = []
    for name in SCRIPTS:
        script = HERE / name
        if not script.exists():
            print(f"-- {name}: not present, skipped")
            continue
        print(f"\n-- {name}", flush=True)
        started = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"-- {name}: exit {rc} after {time.monotonic() - started:.1f} s", flush=True)
        if rc:
            failed.append(name)
    print("\nresults:", ", ".join(sorted(p.name for p in HERE.glob("results-*.json"))))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
