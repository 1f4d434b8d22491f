"""Checkpoints without pickle: weights in safetensors, configuration and metadata in JSON.

    <dir>/model.safetensors    every parameter and persistent buffer (calibration knots included)
    <dir>/config.json          {"format": 1, "kind": "ranker" | "logistic", "version": ...,
                                "config": RankerConfig fields, "metadata": {...}}

Loading rebuilds the module from config.json and reads tensors with safetensors, which cannot run
code. A config written before a field existed loads as the model it was (a checkpoint from before
the position term has no `position_feature`: it loads as a ranker without one, scoring as it did; one
from before the wide part loads without it). The weights include each embedding table's row-wise
Adagrad accumulator, so a warm start continues the optimiser. safetensors is imported inside the functions (the package may travel without it).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.files import load_safetensors, read_json
from training.ranker.model import MODEL_VERSION, Ranker, RankerConfig

CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _model_kind(model: nn.Module) -> str:
    from training.ranker.logistic import LogisticRegression

    if isinstance(model, Ranker):
        return "ranker"
    if isinstance(model, LogisticRegression):
        return "logistic"
    raise TypeError(f"cannot checkpoint a {type(model).__name__}")


def _write_atomically(target: Path, payload: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.write_bytes(payload)
    os.replace(staging, target)


def save_checkpoint(model: nn.Module, directory: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors and config.json into `directory` (each file replaced atomically)."""
    from safetensors.torch import save

    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    description = {
        "format": CHECKPOINT_FORMAT, "kind": _model_kind(model), "version": model.config.version,
        "config": model.config.to_dict(), "metadata": metadata or {},
    }
    directory = Path(directory)
    _write_atomically(directory / WEIGHTS_FILE, save(tensors, metadata={"format": str(CHECKPOINT_FORMAT)}))
    _write_atomically(directory / CONFIG_FILE, json.dumps(description, indent=2, sort_keys=True, default=str).encode())
    return directory


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a ranker checkpoint (no {CONFIG_FILE})")
    description = read_json(path)
    if description.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {description.get('format')!r}, this code reads {CHECKPOINT_FORMAT}")
    return description


def load_checkpoint(directory: Path, device: str | torch.device = "cpu", sparse_gradients: bool = True) -> nn.Module:
    """Rebuild the model from config.json and load its tensors from model.safetensors (no pickle)."""
    from training.ranker.logistic import LogisticRegression

    description = read_checkpoint_config(directory)
    config = RankerConfig.from_dict(description["config"])
    if config.version != MODEL_VERSION:
        raise ValueError(f"{directory}: model version {config.version!r}, this code builds {MODEL_VERSION!r}")
    cls = {"ranker": Ranker, "logistic": LogisticRegression}[description["kind"]]
    model = cls(config, sparse_gradients=sparse_gradients)
    tensors = load_safetensors(Path(directory) / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Checkpoints written before the embedding tables kept their row-wise Adagrad accumulators (embeddings.py)
    # load with zeros there: a warm start from them restarts the optimiser, as it always did then.
    missing = [name for name in missing if not name.endswith("accumulator")]
    if "position.logits" in missing:
        raise ValueError(f"{directory}: config.json sets position_feature={config.position_feature!r} but "
                         f"{WEIGHTS_FILE} has no position.logits (the position term's weights)")
    if missing or unexpected:
        raise ValueError(f"{directory}: checkpoint does not match its config (missing {missing}, unexpected {unexpected})")
    return model.to(device)
