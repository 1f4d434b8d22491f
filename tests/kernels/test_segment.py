"""kernels.segment: per-entity sums and weighted outer-product sums (GLMix gradient / Hessian)."""

import pytest
import torch
from kernel_testing import HAS_CUDA, TOLERANCE, relative_error, sizes

from kernels.segment import segment_outer_sum, segment_outer_sum_reference, segment_sum, segment_sum_reference

# (rows, features, segments): odd sizes, a feature count over one 64-wide tile, empty segments, and d = 32
# with ~10 rows a segment (float32 sorted ids take the pipelined backward there).
CASES = sizes(cpu=[(301, 7, 23), (97, 70, 5), (400, 32, 37)],
              gpu=[(100_003, 33, 5_001), (20_011, 130, 301), (200_003, 32, 20_011)])


def _ids(n, num_segments, device, ids_sorted):
    # Leave the last segment empty on purpose: it must come back as zeros.
    ids = torch.randint(0, num_segments - 1, (n,), device=device)
    return ids.sort().values if ids_sorted else ids


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ids_sorted", [False, True])
def test_outer_sum_and_gradients_match_reference(case, dtype, ids_sorted, device, triton_backend):
    n, d, num_segments = case
    ids = _ids(n, num_segments, device, ids_sorted)
    features = torch.randn(n, d, device=device, dtype=dtype, requires_grad=True)
    weights = torch.rand(n, device=device, dtype=dtype, requires_grad=True)
    features_ref, weights_ref = (t.detach().clone().requires_grad_() for t in (features, weights))
    out = segment_outer_sum(features, weights, ids, num_segments, ids_sorted=ids_sorted)
    expected = segment_outer_sum_reference(features_ref, weights_ref, ids, num_segments)
    assert out.shape == (num_segments, d, d) and out.dtype == dtype
    assert relative_error(out, expected) < TOLERANCE[dtype]
    assert torch.all(out[-1] == 0)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert relative_error(features.grad, features_ref.grad) < TOLERANCE[dtype]
    assert relative_error(weights.grad, weights_ref.grad) < TOLERANCE[dtype]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_sum_and_gradient_match_reference(case, dtype, device, triton_backend):
    n, d, num_segments = case
    ids = _ids(n, num_segments, device, ids_sorted=False)
    values = torch.randn(n, d, device=device, dtype=dtype, requires_grad=True)
    values_ref = values.detach().clone().requires_grad_()
    out = segment_sum(values, ids, num_segments)
    expected = segment_sum_reference(values_ref, ids, num_segments)
    assert relative_error(out, expected) < TOLERANCE[dtype]
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert relative_error(values.grad, values_ref.grad) < TOLERANCE[dtype]


def test_outer_sum_is_bitwise_deterministic(device, triton_backend):
    n, d, num_segments = sizes(cpu=(200, 9, 4), gpu=(200_000, 17, 100))
    features, weights = torch.randn(n, d, device=device), torch.rand(n, device=device)
    ids = torch.randint(0, num_segments, (n,), device=device)
    first = segment_outer_sum(features, weights, ids, num_segments)
    assert torch.equal(first, segment_outer_sum(features, weights, ids, num_segments))


def test_hessian_of_one_row_is_its_weighted_outer_product(device, triton_backend):
    x = torch.tensor([[1.0, 2.0, -1.0]], device=device)
    out = segment_outer_sum(x, torch.tensor([0.5], device=device), torch.tensor([1], device=device), 2)
    assert torch.allclose(out[1], 0.5 * x.T @ x) and torch.all(out[0] == 0)


def test_out_of_range_ids_are_refused(device):
    with pytest.raises(ValueError, match=r"segment_ids must lie in \[0, 3\)"):
        segment_sum(torch.randn(2, 2, device=device), torch.tensor([0, 3], device=device), 3)


@pytest.mark.parametrize("bad_id", [-1, 3])
@pytest.mark.parametrize("ids_sorted", [False, True])
def test_kernels_refuse_out_of_range_ids_from_their_layout(bad_id, ids_sorted, device, triton_backend):
    ids = torch.tensor(sorted([0, 2, bad_id]), device=device)
    with pytest.raises(ValueError, match=r"segment_ids must lie in \[0, 3\)"):
        segment_outer_sum(torch.randn(3, 2, device=device), torch.rand(3, device=device), ids, 3, ids_sorted=ids_sorted)
    with pytest.raises(ValueError, match=r"segment_ids must lie in \[0, 3\)"):
        segment_sum(torch.randn(3, 2, device=device), ids, 3, ids_sorted=ids_sorted)


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a GPU")
def test_outer_sum_and_gradients_replay_in_a_cuda_graph(triton_backend):
    # GLMix's Newton steps can be captured: inside a capture the id-range check's host read is skipped.
    n, d, num_segments = 50_001, 19, 997
    features = torch.randn(n, d, device="cuda", requires_grad=True)
    weights = torch.rand(n, device="cuda", requires_grad=True)
    ids = torch.randint(0, num_segments, (n,), device="cuda")
    grad = torch.randn(num_segments, d, d, device="cuda")

    def step():
        out = segment_outer_sum(features, weights, ids, num_segments)
        # Detached: an output that kept the eager graph alive would tie the leaves' gradient accumulators
        # to the stream of that eager run, which the capture then refuses to wait on.
        return (out.detach(), *torch.autograd.grad(out, (features, weights), grad))

    expected = step()
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up off the capture stream (Triton compiles here)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        captured = step()
    features.data.mul_(2.0)  # a new input: the replay must see it
    graph.replay()
    # Powers of two scale float32 exactly: out and d w by 4, d x by 2, bit for bit.
    for ours, reference, scale in zip(captured, expected, (4.0, 2.0, 4.0)):
        assert torch.equal(ours, scale * reference)


@pytest.mark.parametrize("ids_sorted", [False, True])
def test_layout_starts_match_searchsorted(ids_sorted, device, triton_backend):
    # Runs of empty segments at the start, in the middle and at the end, and ids out of [0, S) on both sides:
    # the one-pass starts kernel must give searchsorted's answer for every boundary.
    from kernels.segment import _segment_layout

    num_segments = 40
    ids = torch.tensor([-2, 3, 3, 4, 9, 9, 9, 20, 21, 21, 35, 44], device=device)
    for kept in (ids, ids[1:-1], ids[:0], ids[[0]]):
        kept = kept if ids_sorted else kept[torch.randperm(kept.numel(), device=device)]
        _, starts = _segment_layout(kept, num_segments, ids_sorted)
        boundaries = torch.arange(num_segments + 1, device=device)
        assert torch.equal(starts, torch.searchsorted(kept.sort().values, boundaries))


@pytest.mark.parametrize("d", [16, 32])
def test_pipelined_backward_covers_segments_longer_than_its_first_chunk(d, device, triton_backend):
    # Short segments around one of 40 rows (two and a half 16-row chunks) and one of 17: the pipelined float32
    # backward takes each segment's first 16 rows in its loop and the rest afterwards.
    from kernels.segment import _use_pipelined_backward

    lengths = torch.tensor([3, 0, 9, 40, 1, 12, 17, 5, 0, 8, 16, 2])
    ids = torch.repeat_interleave(torch.arange(lengths.numel()), lengths).to(device)
    n, num_segments = ids.numel(), lengths.numel()
    features = torch.randn(n, d, device=device, requires_grad=True)
    weights = torch.rand(n, device=device, requires_grad=True)
    grad = torch.randn(num_segments, d, d, device=device)
    assert _use_pipelined_backward(features.detach(), grad, has_order=False)
    out = segment_outer_sum(features, weights, ids, num_segments, ids_sorted=True)
    features_ref, weights_ref = (t.detach().clone().requires_grad_() for t in (features, weights))
    expected = segment_outer_sum_reference(features_ref, weights_ref, ids, num_segments)
    out.backward(grad)
    expected.backward(grad)
    assert relative_error(features.grad, features_ref.grad) < TOLERANCE[torch.float32]
    assert relative_error(weights.grad, weights_ref.grad) < TOLERANCE[torch.float32]
