"""kernels.dispatch: the one place that picks Triton or the PyTorch reference."""

import pytest
import torch
from kernel_testing import HAS_CUDA

from kernels import dispatch


def test_cpu_tensors_take_the_reference_path_by_default():
    with dispatch.backend("auto"):
        assert dispatch.use_triton(torch.ones(3)) is False


def test_reference_backend_wins_everywhere():
    with dispatch.backend("reference"):
        assert dispatch.use_triton(torch.ones(3)) is False


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter is only switched on where there is no GPU")
def test_forced_triton_backend_runs_cpu_tensors_under_the_interpreter():
    with dispatch.backend("triton"):
        assert dispatch.use_triton(torch.ones(3)) is True


def test_unknown_backend_and_empty_call_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.set_backend("cuda")
    with pytest.raises(ValueError, match="at least one tensor"):
        dispatch.use_triton(None)


def test_backend_context_restores_the_previous_choice():
    before = dispatch.get_backend()
    with dispatch.backend("reference"):
        assert dispatch.get_backend() == "reference"
    assert dispatch.get_backend() == before


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_tensors_take_triton_and_mixed_devices_fail():
    assert dispatch.use_triton(torch.ones(3, device="cuda")) is True
    with pytest.raises(ValueError, match="different devices"):
        dispatch.use_triton(torch.ones(3, device="cuda"), torch.ones(3))


def test_no_silent_fallback_when_triton_is_missing(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with dispatch.backend("triton"), pytest.raises(RuntimeError, match="never falls back silently"):
        dispatch.use_triton(torch.ones(3))
