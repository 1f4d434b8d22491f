"""A cut-off stored file fails with its path first, not the parser's bare message."""

import json
from datetime import date

import pytest
import torch

from rankflow.config import Settings
from rankflow.errors import UnreadableInput
from training.files import UnreadableFile, load_safetensors, read_json


def _cut(path, payload: bytes):
    path.write_bytes(payload[: len(payload) // 2])
    return path


def test_json_files_cut_off_are_named(tmp_path):
    from features.training_set import TABLE, read_spec
    from rankflow.paths import read_json as read_app_json
    from rankflow.stages.ranker import serving_state

    document = json.dumps({"label": "label", "member": "member_id", "item": "item_id"}).encode()
    cut = _cut(tmp_path / "config.json", document)
    with pytest.raises(UnreadableFile, match=f"^{cut}: not readable JSON"):
        read_json(cut)
    with pytest.raises(UnreadableInput, match=f"^{cut}: not readable JSON"):
        read_app_json(cut)

    settings = Settings(data_dir=tmp_path / "data")
    spec = settings.paths.feature_table(TABLE) / "spec.json"
    spec.parent.mkdir(parents=True)
    _cut(spec, document)
    with pytest.raises(UnreadableInput, match=f"^{spec}: not readable JSON"):
        read_spec(settings)
    serving = settings.paths.models / "serving.json"
    serving.parent.mkdir(parents=True)
    _cut(serving, document)
    with pytest.raises(UnreadableInput, match=f"^{serving}: not readable JSON"):
        serving_state(settings)


def test_safetensors_cut_off_are_named(tmp_path):
    from safetensors.torch import save

    from training.glmix.random_effects import RandomEffectState
    from training.glmix.state import decode_state, encode_state

    cut = _cut(tmp_path / "model.safetensors", save({"weight": torch.ones(64, 8)}))
    with pytest.raises(UnreadableFile, match=f"^{cut}: not a readable safetensors file"):
        load_safetensors(cut)

    state = RandomEffectState(torch.arange(3), torch.zeros(3, 2), torch.ones(3, 2))
    payload = encode_state(state, {"logical_date": date(2026, 1, 1).isoformat(), "side": "member",
                                   "basis_version": "v"})
    with pytest.raises(ValueError, match="^models/glmix/dt=2026-01-01/member.safetensors: not a readable"):
        decode_state(payload[:40], "models/glmix/dt=2026-01-01/member.safetensors")
