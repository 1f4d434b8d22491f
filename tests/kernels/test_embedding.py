"""kernels.embedding: embedding bags with row-wise Adagrad fused into the backward."""

import pytest
import torch
from kernel_testing import HAS_CUDA, TOLERANCE, relative_error, sizes

from kernels import dispatch
from kernels.embedding import FusedEmbeddingBag, embedding_bag_reference, rowwise_adagrad_reference

# (rows, dim, bags, max bag length): odd dims, empty bags, duplicate rows within and across bags.
CASES = sizes(cpu=[(50, 37, 23, 6)], gpu=[(100_003, 64, 8_191, 7), (2_000, 129, 4_097, 40)])
LR, EPS = 0.05, 1e-8


def _batch(num_rows, n_bags, max_len, device):
    lengths = torch.randint(0, max_len + 1, (n_bags,), device=device)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=device), lengths.cumsum(0)])
    # A small hot set makes duplicates certain.
    indices = torch.randint(0, max(2, num_rows // 10), (int(offsets[-1]),), device=device)
    return indices, offsets


def _module(num_rows, dim, mode, dtype, device, backend):
    torch.manual_seed(1)
    module = FusedEmbeddingBag(num_rows, dim, mode=mode, lr=LR, eps=EPS, dtype=dtype, device=device)
    module.weight.normal_()  # unit-scale rows, so the test sees the update against O(1) weights
    module.momentum.uniform_(0.0, 1.0)
    module.backend = backend
    return module


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_fused_update_match_reference(case, mode, dtype, device):
    num_rows, dim, n_bags, max_len = case
    indices, offsets = _batch(num_rows, n_bags, max_len, device)
    ours = _module(num_rows, dim, mode, dtype, device, "triton")
    weight_before, momentum_before = ours.weight.clone(), ours.momentum.clone()
    with dispatch.backend("triton"):
        out = ours(indices, offsets)
    expected = embedding_bag_reference(weight_before.float(), indices, offsets, mode)
    assert out.shape == (n_bags, dim) and out.dtype == dtype
    assert relative_error(out, expected) < TOLERANCE[dtype]
    grad = torch.randn(n_bags, dim, device=device)
    with dispatch.backend("triton"):
        out.backward(grad.to(dtype))
    weight_ref, momentum_ref = weight_before.clone(), momentum_before.clone()
    rowwise_adagrad_reference(weight_ref, momentum_ref, indices, offsets, grad.to(dtype), mode, LR, EPS)
    touched = torch.unique(indices)
    untouched = torch.ones(num_rows, dtype=torch.bool, device=device)
    untouched[touched] = False
    assert relative_error(ours.momentum[touched], momentum_ref[touched]) < TOLERANCE[torch.float32]
    if dtype == torch.float32:  # the step itself, not only the weights it moved
        step, step_ref = ours.weight - weight_before, weight_ref - weight_before
        assert relative_error(step[touched], step_ref[touched]) < TOLERANCE[dtype]
    assert relative_error(ours.weight[touched], weight_ref[touched]) < TOLERANCE[dtype]
    assert torch.equal(ours.weight[untouched], weight_before[untouched])
    assert torch.equal(ours.momentum[untouched], momentum_before[untouched])


def test_update_is_bitwise_deterministic(device):
    num_rows, dim, n_bags, max_len = sizes(cpu=(30, 16, 40, 5), gpu=(1000, 64, 8192, 20))
    indices, offsets = _batch(num_rows, n_bags, max_len, device)
    grad = torch.randn(n_bags, dim, device=device)
    results = []
    for _ in range(2):
        module = _module(num_rows, dim, "sum", torch.float32, device, "triton")
        with dispatch.backend("triton"):
            module(indices, offsets).backward(grad)
        results.append(module.weight.clone())
    assert torch.equal(results[0], results[1])


def test_dense_optimiser_never_sees_the_table_and_eval_does_not_update(device):
    module = FusedEmbeddingBag(20, 8, device=device)
    assert list(module.parameters()) == []
    assert set(module.state_dict()) == {"weight", "momentum"}
    before = module.weight.clone()
    indices, offsets = torch.tensor([1, 2, 2], device=device), torch.tensor([0, 1, 3], device=device)
    with dispatch.backend("triton"):
        with torch.no_grad():
            module(indices, offsets)
        module.eval()
        out = module(indices, offsets)
    assert not out.requires_grad and torch.equal(module.weight, before)


def test_one_training_step_moves_only_the_batch_rows_by_lr(device):
    # First step from zero momentum: m = mean(g^2), so each touched row moves by lr * g / rms(g).
    module = FusedEmbeddingBag(10, 4, lr=0.1, device=device)
    before = module.weight.clone()
    with dispatch.backend("triton"):
        module(torch.tensor([3], device=device), torch.tensor([0, 1], device=device)).sum().backward()
    moved = (module.weight - before).abs().sum(dim=1)
    assert torch.allclose(moved[3], torch.tensor(0.4, device=device), atol=1e-5)
    assert moved.sum() == moved[3]


def test_bad_mode_and_offsets_are_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        FusedEmbeddingBag(4, 2, mode="max")
    with pytest.raises(ValueError, match="CSR offsets"):
        FusedEmbeddingBag(4, 2)(torch.tensor([[1]]), torch.tensor([0, 1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bags_of_one_without_offsets_gather_rows_and_update_like_csr_bags(dtype, device):
    num_rows, dim, n = sizes(cpu=(40, 37, 29), gpu=(100_003, 64, 212_993))
    indices = torch.randint(0, max(2, num_rows // 10), (n,), device=device)  # duplicates certain
    offsets = torch.arange(n + 1, device=device)
    single, csr = (_module(num_rows, dim, "sum", dtype, device, "triton") for _ in range(2))
    grad = torch.randn(n, dim, device=device).to(dtype)
    with dispatch.backend("triton"):
        out = single(indices)
        assert out.shape == (n, dim) and out.dtype == dtype
        assert torch.equal(out, csr.weight[indices])  # a gather is exact
        out.backward(grad)
        csr(indices, offsets).backward(grad)
    assert torch.equal(single.weight, csr.weight) and torch.equal(single.momentum, csr.momentum)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_bags_of_one_with_index_minus_one_give_zero_rows_and_update_no_row(backend, device):
    """Padding rows' ids (-1) in bags of one: a zero output row, and the update of the other positions alone
    (with an L2: no row is touched for a -1)."""
    num_rows, dim, n = sizes(cpu=(40, 37, 29), gpu=(100_003, 64, 212_993))
    indices = torch.randint(1, max(3, num_rows // 10), (n,), device=device)
    padding = torch.rand(n, device=device) < 0.3
    padded_indices = torch.where(padding, -1, indices)
    grad = torch.randn(n, dim, device=device)
    padded, plain = (_module(num_rows, dim, "sum", torch.float32, device, backend) for _ in range(2))
    padded.weight_decay = plain.weight_decay = 0.1
    with dispatch.backend(backend):
        out = padded(padded_indices)
        assert torch.equal(out[padding], torch.zeros_like(out[padding]))
        assert torch.equal(out[~padding], plain.weight[indices[~padding]])
        out.backward(grad)
        plain(indices[~padding]).backward(grad[~padding])
    assert relative_error(padded.weight, plain.weight) < TOLERANCE[torch.float32]
    assert relative_error(padded.momentum, plain.momentum) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("spill_chunks", [2, 32])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_runs_longer_than_a_chunk_are_summed_across_chunks(mode, spill_chunks, weight_decay, device, monkeypatch):
    # 16 sorted positions per backward program and three hot rows: runs cross several chunk edges; with
    # 2 following chunks per spill step, a run's partials take several steps to add up.
    from kernels import embedding

    monkeypatch.setattr(embedding, "_CHUNK_VALUES", 16 * 16)
    monkeypatch.setattr(embedding, "_SPILL_CHUNKS", spill_chunks)
    num_rows, dim, n_bags = 7, 13, sizes(cpu=40, gpu=4000)
    lengths = torch.randint(1, 9, (n_bags,), device=device)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=device), lengths.cumsum(0)])
    indices = torch.randint(2, 5, (int(offsets[-1]),), device=device)
    module = _module(num_rows, dim, mode, torch.float32, device, "triton")
    module.weight_decay = weight_decay  # the decay is added once per row, crossing runs included
    weight_before, momentum_ref = module.weight.clone(), module.momentum.clone()
    weight_ref = weight_before.clone()
    grad = torch.randn(n_bags, dim, device=device)
    with dispatch.backend("triton"):
        module(indices, offsets).backward(grad)
    rowwise_adagrad_reference(weight_ref, momentum_ref, indices, offsets, grad, mode, LR, EPS, weight_decay)
    assert relative_error(module.momentum, momentum_ref) < 1e-5
    assert relative_error(module.weight - weight_before, weight_ref - weight_before) < 1e-5


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_weight_decay_adds_lambda_w_to_the_touched_rows_only(case, mode, device):
    num_rows, dim, n_bags, max_len = case
    indices, offsets = _batch(num_rows, n_bags, max_len, device)
    ours = _module(num_rows, dim, mode, torch.float32, device, "triton")
    ours.weight_decay = 0.1
    weight_ref, momentum_ref = ours.weight.clone(), ours.momentum.clone()
    weight_before, momentum_before = weight_ref.clone(), momentum_ref.clone()
    grad = torch.randn(n_bags, dim, device=device)
    with dispatch.backend("triton"):
        ours(indices, offsets).backward(grad)
    rowwise_adagrad_reference(weight_ref, momentum_ref, indices, offsets, grad, mode, LR, EPS, 0.1)
    undecayed_weight, undecayed_momentum = weight_before.clone(), momentum_before.clone()
    rowwise_adagrad_reference(undecayed_weight, undecayed_momentum, indices, offsets, grad, mode, LR, EPS)
    touched = torch.unique(indices)
    untouched = torch.ones(num_rows, dtype=torch.bool, device=device)
    untouched[touched] = False
    assert relative_error(ours.momentum[touched], momentum_ref[touched]) < TOLERANCE[torch.float32]
    step, step_ref = ours.weight - weight_before, weight_ref - weight_before
    assert relative_error(step[touched], step_ref[touched]) < TOLERANCE[torch.float32]
    assert relative_error(step_ref[touched], (undecayed_weight - weight_before)[touched]) > 1e-3  # it decays
    assert torch.equal(ours.weight[untouched], weight_before[untouched])
    assert torch.equal(ours.momentum[untouched], momentum_before[untouched])
    with pytest.raises(ValueError, match="weight_decay"):
        FusedEmbeddingBag(4, 3, weight_decay=-1.0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_padding_positions_before_the_first_bag_change_nothing(case, mode, backend, device):
    """Spare positions first, as -1 before offsets[0] (a fixed-shape batch): the forward and the update,
    L2 of touched rows included, are those of the unpadded batch, and row 0 stays untouched. 300 spare
    positions span several of the backward's chunks, so the -1 run crosses chunk edges."""
    num_rows, dim, n_bags, max_len = case
    indices, offsets = _batch(num_rows, n_bags, max_len, device)
    indices = indices.clamp(min=1)  # row 0 must be untouched by the real positions
    spare = 300
    padded_indices = torch.cat([torch.full((spare,), -1, dtype=indices.dtype, device=device), indices])
    grad = torch.randn(n_bags, dim, device=device)
    results = []
    for idx, offs in ((indices, offsets), (padded_indices, offsets + spare)):
        module = _module(num_rows, dim, mode, torch.float32, device, backend)
        module.weight_decay = 0.1
        before = module.weight[0].clone(), module.momentum[0].clone()
        with dispatch.backend(backend):
            out = module(idx, offs)
            out.backward(grad)
        assert torch.equal(module.weight[0], before[0]) and torch.equal(module.momentum[0], before[1])
        results.append((out.detach(), module.weight.clone(), module.momentum.clone()))
    for plain, padded in zip(*results):  # the forward's tile shape follows the mean bag length: rounding moves
        assert relative_error(padded, plain) < TOLERANCE[torch.float32]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_step_captured_in_a_cuda_graph_equals_the_eager_step():
    # kernels.captured_step replays the training step as a CUDA graph: a replay must update exactly as an
    # eager step does (bitwise: the order of the sums is fixed), register-capped update kernel included.
    indices, offsets = _batch(100_003, 8_191, 7, "cuda")
    grad = torch.randn(8_191, 64, device="cuda")
    eager, captured = (_module(100_003, 64, "sum", torch.float32, "cuda", "triton") for _ in range(2))
    with dispatch.backend("triton"):
        for _ in range(2):
            eager(indices, offsets).backward(grad)
        captured(indices, offsets).backward(grad)  # warm-up (compiles the kernels), then capture one step
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured(indices, offsets).backward(grad)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured.weight, eager.weight) and torch.equal(captured.momentum, eager.momentum)


def _gathered_step(rank, shards, weight, mode):
    import torch.distributed as dist

    module = FusedEmbeddingBag(weight.shape[0], weight.shape[1], mode=mode, lr=LR, eps=EPS,
                               process_group=dist.group.WORLD)
    module.weight.copy_(weight)
    indices, offsets, grad = shards[rank]
    module(indices, offsets).backward(grad)
    return module.weight.clone(), module.momentum.clone()


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_a_process_group_gathers_every_ranks_rows_into_one_update(mode, tmp_path):
    """Two ranks with a shard each end with equal tables, equal to one process stepping on both shards
    with the mean of the two gradients (the data-parallel rule of training.ranker.train)."""
    from process_group import run_ranks

    torch.manual_seed(3)
    rows, dim, world = 40, 7, 2
    weight = torch.randn(rows, dim)
    shards = []
    for _ in range(world):  # equal shapes per rank, bags of 0..4 rows, rows shared across the ranks
        lengths = torch.tensor([3, 0, 4, 1, 2])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        shards.append((torch.randint(0, 12, (int(offsets[-1]),)), offsets, torch.randn(len(lengths), dim)))
    results = run_ranks(_gathered_step, world, tmp_path, shards, weight, mode)

    indices = torch.cat([s[0] for s in shards])
    offsets = torch.cat([shards[0][1][:-1], shards[1][1] + shards[0][0].numel()])
    grad = torch.cat([s[2] for s in shards]) / world
    expected_weight, expected_momentum = weight.clone(), torch.zeros(rows)
    rowwise_adagrad_reference(expected_weight, expected_momentum, indices, offsets, grad, mode, LR, EPS)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert relative_error(results[0][0], expected_weight) < TOLERANCE[torch.float32]
    assert relative_error(results[0][1], expected_momentum) < TOLERANCE[torch.float32]
    assert not torch.equal(results[0][0], weight)
