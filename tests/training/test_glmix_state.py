"""Posterior state files: safetensors + JSON metadata round trip, and clear errors on foreign files."""

import pytest
import torch

from training.glmix.random_effects import RandomEffectState
from training.glmix.state import decode_state, encode_state


def test_round_trip_keeps_tensors_and_metadata():
    state = RandomEffectState(torch.tensor([3, 8]), torch.randn(2, 4, dtype=torch.float64),
                              torch.eye(4, dtype=torch.float64).expand(2, 4, 4).clone())
    restored, meta = decode_state(encode_state(state, {"logical_date": "2026-01-02", "basis_version": "abc"}))
    assert torch.equal(restored.entity_ids, state.entity_ids) and torch.equal(restored.mean, state.mean)
    assert torch.equal(restored.precision, state.precision) and restored.covariance == "full"
    assert meta["logical_date"] == "2026-01-02" and meta["dim"] == 4 and meta["entities"] == 2


def test_foreign_safetensors_is_refused_with_the_file_name():
    from safetensors.torch import save

    with pytest.raises(ValueError, match="member.safetensors"):
        decode_state(save({"x": torch.zeros(1)}), "member.safetensors")
