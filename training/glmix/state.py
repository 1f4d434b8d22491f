"""Posterior state on disk: safetensors tensors + JSON metadata, never pickle.

`encode_state` gives the bytes of one side's state (entity_ids, mean, precision) with its metadata
(covariance, dim, basis version, logical date, ...) embedded as safetensors string metadata; the caller
writes them atomically (rankflow.paths). `decode_state` is its inverse and checks the shapes.
safetensors is imported here lazily so `training` imports with torch and numpy alone.
"""

from __future__ import annotations

import json

import torch

from training.glmix.random_effects import RandomEffectState

STATE_FORMAT = "rankflow-glmix-state/1"


def encode_state(state: RandomEffectState, metadata: dict) -> bytes:
    from safetensors.torch import save

    header = {"format": STATE_FORMAT, "covariance": state.covariance, "dim": state.dim,
              "entities": len(state), "dtype": str(state.mean.dtype).removeprefix("torch."), **metadata}
    tensors = {"entity_ids": state.entity_ids.cpu().contiguous(), "mean": state.mean.cpu().contiguous(),
               "precision": state.precision.cpu().contiguous()}
    return save(tensors, metadata={"rankflow": json.dumps(header, sort_keys=True)})


def decode_state(payload: bytes, source: str = "state") -> tuple[RandomEffectState, dict]:
    """(state, metadata) from `encode_state` bytes; `source` names the file in errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from training.files import UnreadableFile

    try:
        tensors = load(payload)
    except SafetensorError as error:
        raise UnreadableFile(f"{source}: not a readable safetensors file ({error}); the file is cut off or corrupt") \
            from None
    missing = {"entity_ids", "mean", "precision"} - set(tensors)
    if missing:
        raise ValueError(f"{source}: not a GLMix state, missing tensors {sorted(missing)}")
    header = _header(payload, source)
    state = RandomEffectState(tensors["entity_ids"], tensors["mean"], tensors["precision"])
    if state.covariance != header["covariance"] or state.dim != header["dim"] or len(state) != header["entities"]:
        raise ValueError(f"{source}: tensors do not match their metadata {header}")
    return state, header


def _header(payload: bytes, source: str) -> dict:
    # safetensors layout: 8-byte little-endian header length, then the JSON header with __metadata__.
    size = int.from_bytes(payload[:8], "little")
    meta = json.loads(payload[8 : 8 + size]).get("__metadata__", {})
    if "rankflow" not in meta:
        raise ValueError(f"{source}: no rankflow metadata in the safetensors header")
    header = json.loads(meta["rankflow"])
    if header.get("format") != STATE_FORMAT:
        raise ValueError(f"{source}: format {header.get('format')!r}, expected {STATE_FORMAT!r}")
    return header
