"""The meta-initialisation on disk: safetensors weights + JSON config, one folder per logical date.

    <data_dir>/models/meta/dt=D/model.safetensors   body, phi_0 and the dense standardisation
    <data_dir>/models/meta/dt=D/config.json         MetaConfig + training metadata (metrics, source days)

Written with an atomic directory swap (re-running day D replaces D and nothing else); `latest_state`
finds the newest state at or before a day, which is what the daily refresh uses and what weekly
meta-training warm-starts from. Never pickle: safetensors holds tensors only.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import torch

from training.files import load_safetensors, read_json
from training.meta.config import MetaConfig
from training.meta.subnetwork import SubNetwork

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_state(directory: Path, net: SubNetwork, config: MetaConfig, metadata: dict[str, Any]) -> None:
    """Write weights and config into `directory` (an atomic_directory staging folder)."""
    from safetensors.torch import save_file  # inside: training imports with torch and numpy alone

    directory = Path(directory)
    tensors = {name: value.detach().to("cpu", torch.float32).contiguous() for name, value in net.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE))
    document = {"config": config.to_dict(), "metadata": metadata}
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))


def load_state(directory: Path) -> tuple[SubNetwork, MetaConfig, dict[str, Any]]:
    """Rebuild the sub-network saved by `save_state`; errors name the folder and what is missing."""
    directory = Path(directory)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory}: no {name}; not a meta-initialisation folder")
    document = read_json(directory / CONFIG_FILE)
    config = MetaConfig.from_dict(document["config"])
    net = SubNetwork(config.subnetwork)
    tensors = load_safetensors(directory / WEIGHTS_FILE)
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_FILE}: missing tensors {missing}, unexpected {unexpected} "
                         f"for the sub-network described in {CONFIG_FILE}")
    net.eval()
    return net, config, document.get("metadata", {})


def state_days(root: Path) -> list[date]:
    """Logical dates with a complete state under `root` (models/meta), oldest first."""
    root = Path(root)
    if not root.exists():
        return []
    days = []
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith("dt=") and (child / WEIGHTS_FILE).exists():
            try:
                days.append(date.fromisoformat(child.name[3:]))
            except ValueError:
                continue
    return sorted(days)


def latest_state(root: Path, day: date, strictly_before: bool = False) -> Path | None:
    """The newest state folder at (or strictly before) `day`, or None."""
    candidates = [d for d in state_days(root) if (d < day if strictly_before else d <= day)]
    return Path(root) / f"dt={candidates[-1].isoformat()}" if candidates else None
