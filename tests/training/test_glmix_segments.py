"""Segment sums: the bucketed (sorted ids) and blocked outer sums equal a plain per-segment loop."""

import torch
from glmix_reference import one_torch_thread  # noqa: F401 (autouse fixture)

from training.glmix.segments import segment_outer_sum, segment_sum


def test_outer_sums_equal_per_segment_loop():
    generator = torch.Generator().manual_seed(0)
    counts = torch.tensor([0, 1, 2, 3, 7, 8, 9, 64, 65, 300, 0, 5])
    segments = torch.repeat_interleave(torch.arange(len(counts)), counts)
    x = torch.randn(segments.numel(), 6, dtype=torch.float64, generator=generator)
    w = torch.rand(segments.numel(), dtype=torch.float64, generator=generator)
    expected = torch.stack([(x[segments == s] * w[segments == s, None]).T @ x[segments == s]
                            for s in range(len(counts))])
    bucketed = segment_outer_sum(x, w, segments, len(counts), block_elements=500, sorted_ids=True)
    shuffle = torch.randperm(segments.numel(), generator=generator)
    blocked = segment_outer_sum(x[shuffle], w[shuffle], segments[shuffle], len(counts), block_elements=500)
    torch.testing.assert_close(bucketed, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blocked, expected, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(bucketed[0]) == 0 and torch.count_nonzero(bucketed[10]) == 0
    torch.testing.assert_close(segment_sum(x, segments, len(counts))[4], x[segments == 4].sum(0))
