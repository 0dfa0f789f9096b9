"""What every benchmark records beside its figures: the machine they came from."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt

from locker.sim.broker import MOSQUITTO


def machine_info() -> dict[str, Any]:
    mosquitto = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": mosquitto.stdout.splitlines()[0] if mosquitto.stdout else "?",
        # The figures are only as quiet as the machine: note what else was running.
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }


def write_results(path: Path, what: str, results: Any, **extra: Any) -> None:
    doc = {"what": what, **extra, "machine": machine_info(), "results": results}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path.name}")
