"""Describe the machine a benchmark ran on, and write its result table next to that description.

Every benchmark script calls `describe_machine()` once and `write_result(name, table, machine)` at the end,
which writes `benchmarks/results/<name>-<machine slug>.md` (atomically).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/<script>.py` from a plain checkout
    sys.path.insert(0, str(REPO_ROOT))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _gpu_names() -> list[str]:
    """From nvidia-smi (no CUDA context needed); falls back to torch only if it is already imported."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20, check=True).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (subprocess.SubprocessError, OSError):
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def describe_machine() -> dict:
    """CPU model, cores, memory, GPUs, torch/triton versions, date; `slug` names the result file."""
    cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    gpus = _gpu_names()
    cpu = _cpu_model()
    slug = f"{_slug(gpus[0])}-x{len(gpus)}" if gpus else f"cpu-{_slug(cpu)}-{cores}c"
    return {
        "slug": slug,
        "cpu_model": cpu,
        "cpu_cores": cores,
        "memory_gib": _memory_gib(),
        "gpus": gpus,
        "gpu": gpus[0] if gpus else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "triton": _version("triton"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_markdown(machine: dict) -> str:
    gpu = ", ".join(machine["gpus"]) if machine.get("gpus") else "none"
    return "\n".join([
        f"- CPU: {machine['cpu_model']} ({machine['cpu_cores']} cores available)",
        f"- Memory: {machine['memory_gib']} GiB",
        f"- GPU: {gpu}",
        f"- Python {machine['python']}, torch {machine['torch']}, triton {machine['triton']}",
        f"- Platform: {machine['platform']}",
        f"- Date: {machine['date']}",
    ])


def write_result(name: str, table_markdown: str, machine: dict, copy_to: Path | None = None) -> Path:
    """Write `# name`, the machine and the table to benchmarks/results/<name>-<slug>.md; return its path.

    copy_to: also write the same file into this folder (a GPU run's $OUT, which comes back to the caller).
    """
    target = RESULTS_DIR / f"{name}-{machine['slug']}.md"
    text = f"# {name}\n\n{machine_markdown(machine)}\n\n{table_markdown.rstrip()}\n"
    from rankflow.paths import atomic_write_bytes

    atomic_write_bytes(target, text.encode())
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        (copy_to / target.name).write_text(text)
    return target
