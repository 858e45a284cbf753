"""Provenance of a benchmark's figures: what every JSON under ``benchmarks/results`` records about its run.

``meta()`` returns the command line, the git commit (``+`` when the working tree had uncommitted
changes to tracked files), torch's thread count, the machine (CPU model, cores, load average), the
library versions and the UTC date. ``write_json(path, payload)`` stores ``payload`` with that record
under the key ``"meta"``; a list payload is stored as ``{"meta": ..., "rows": payload}``.

``benchmarks/render.py`` prints the record next to every table it renders from the file, and
``tests/test_figures.py`` checks that quoted figures come from files that carry it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def meta(argv: list[str] | None = None, *, threads: int | None = None, **extra) -> dict:
    """The provenance record of the running benchmark (call it once the run is configured).

    ``argv`` defaults to ``sys.argv``; ``threads`` to ``torch.get_num_threads()``; ``extra`` is added as is.
    """
    import torch

    argv = list(sys.argv if argv is None else argv)
    script = os.path.relpath(Path(argv[0]).resolve(), ROOT) if argv and argv[0].endswith(".py") else argv[0]
    head = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    record = {
        "command": " ".join(shlex.quote(a) for a in ["python", script, *argv[1:]]),
        "commit": head,
        "dirty": bool(dirty) if dirty is not None else None,
        "threads": torch.get_num_threads() if threads is None else threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "system": platform.system(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    record.update(extra)
    return record


def write_json(path: str | os.PathLike, payload, *, record: dict | None = None, **extra) -> Path:
    """Write ``payload`` (dict or list) to ``path`` with the provenance record under ``"meta"``."""
    record = dict(record or meta(), **extra)
    if record.get("machine"):  # the load at the end of the run, to judge the noise of timings
        record["machine"] = dict(record["machine"], load_average_end=[round(x, 2) for x in os.getloadavg()])
    body = {"meta": record, **payload} if isinstance(payload, dict) else {"meta": record, "rows": payload}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1) + "\n")
    print(f"wrote {path}")
    return path
