"""Per-kernel benchmark: ours (Triton) vs the PyTorch reference, eager and under torch.compile.

Each row times forward + backward (triton.testing.do_bench, median of many runs) and converts the
fewest bytes the op must move (each input read once, each output written once; index tensors
included; a row gathered many times counted once) into GB/s, next to the device-to-device copy
bandwidth measured in the same run. Writes a markdown table (benchmarks/results/kernels-<machine>.md)
and a PNG beside it.

    PYTHONPATH=. python3 benchmarks/bench_kernels.py [--ops cross,gate,bce,embedding,segment]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from triton.testing import do_bench

from benchmarks._machine import describe_machine, write_result
from kernels import dispatch
from kernels.bce import bce_reference, bce_with_logits
from kernels.cross import cross_reference, cross_tail
from kernels.embedding import FusedEmbeddingBag, embedding_bag_reference, rowwise_adagrad_reference
from kernels.gate import dense_gate, gate_reference
from kernels.segment import _segment_layout, segment_outer_sum, segment_outer_sum_reference

DEVICE = "cuda"


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    bytes_moved: float
    ours_ms: float
    eager_ms: float
    compiled_ms: float | None
    note: str = ""


def median_ms(fn) -> float:
    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def copy_bandwidth_gbs() -> float:
    source = torch.randn(256 * 1024 * 1024, device=DEVICE)  # 1 GiB
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source))
    return 2 * source.numel() * 4 / ms / 1e6


def fwd_bwd(fn, inputs, grad):
    """A closure that runs fn forward and backward to the inputs (no .grad accumulation)."""
    needs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run():
        out = fn(*inputs)
        torch.autograd.grad(out, needs, grad)
    return run


def compiled(fn):
    return torch.compile(fn, dynamic=False)


def time_elementwise(rows, op, fn, reference, inputs, grad, bytes_moved, label, compile_it=True):
    with dispatch.backend("triton"):
        ours = median_ms(fwd_bwd(fn, inputs, grad))
    with dispatch.backend("reference"):
        eager = median_ms(fwd_bwd(reference, inputs, grad))
        comp = median_ms(fwd_bwd(compiled(reference), inputs, grad)) if compile_it else None
    rows.append(Row(op, label, str(inputs[0].dtype).replace("torch.", ""), bytes_moved, ours, eager, comp))


def bench_cross(rows):
    for (m, n), dtype in [((8192, 1677), torch.bfloat16), ((65536, 1677), torch.bfloat16),
                          ((65536, 1677), torch.float32)]:
        x0, p, r = (torch.randn(m, n, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
        b = torch.randn(n, device=DEVICE, dtype=dtype, requires_grad=True)
        grad = torch.randn(m, n, device=DEVICE, dtype=dtype)
        # forward: read x0, p, r, write out; backward: read g, x0, p, write dx0, dp (d residual is g itself)
        bytes_moved = 9 * m * n * x0.element_size()
        time_elementwise(rows, "cross_tail", cross_tail, cross_reference, (x0, p, b, r), grad, bytes_moved, f"{m}x{n}")
        if m >= 65536:
            add_graph_row(rows, cross_tail, (x0, p, b, r), grad)


def bench_gate(rows):
    for (m, n), dtype in [((8192, 1024), torch.bfloat16), ((65536, 1024), torch.bfloat16),
                          ((65536, 1024), torch.float32)]:
        h, z = (torch.randn(m, n, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
        grad = torch.randn(m, n, device=DEVICE, dtype=dtype)
        bytes_moved = 8 * m * n * h.element_size()  # fwd: h, z, out; bwd: g, h, z, dh, dz
        time_elementwise(rows, "dense_gate", dense_gate, gate_reference, (h, z), grad, bytes_moved, f"{m}x{n}")
        if m >= 65536:
            add_graph_row(rows, dense_gate, (h, z), grad)


def graphed(fn):
    """fn captured as a CUDA graph (as kernels.captured_step replays the training step): replay timing is
    GPU time without Python's launch overhead."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def add_graph_row(rows, fn, inputs, grad):
    """The row just timed (rows[-1]) again with ours replayed as a CUDA graph: the eager rows of these
    sub-millisecond kernels include the host's launch and autograd overhead, which moves between runs."""
    eager_row = rows[-1]
    with dispatch.backend("triton"):
        graph_ms = median_ms(graphed(fwd_bwd(fn, inputs, grad)))
    rows.append(Row(eager_row.op, eager_row.shape + ", CUDA graph", eager_row.dtype, eager_row.bytes_moved, graph_ms,
                    eager_row.eager_ms, eager_row.compiled_ms, "ours replayed as a CUDA graph (GPU time)"))


def bench_bce(rows):
    for n, dtype, weighted in [(8192, torch.float32, False), (64 * 1024 * 1024, torch.float32, False),
                               (64 * 1024 * 1024, torch.bfloat16, True)]:
        z = torch.randn(n, device=DEVICE, dtype=dtype, requires_grad=True)
        y = torch.randint(0, 2, (n,), device=DEVICE).to(dtype)
        w = torch.rand(n, device=DEVICE) if weighted else None
        grad = torch.ones((), device=DEVICE)
        bytes_moved = n * (3 * z.element_size() + (4 if weighted else 0))  # z, y, dz (+ w)
        label = f"{n}" + (" weighted" if weighted else "")
        time_elementwise(rows, "bce_with_logits", bce_with_logits, bce_reference, (z, y, w), grad, bytes_moved, label)
        if n <= 1 << 20:
            continue
        reference_row = rows[-1]
        if weighted:
            # Without weight_sum, sum(w) must be known before the first normalised gradient, and 4 B x n of w
            # does not fit on chip: w is read twice. The bytes column counts it once; the note gives the bound.
            two_pass = bytes_moved + 4 * n
            ceiling = 100 * bytes_moved / two_pass
            reference_row.note = f"w read twice (sum, then gradient): {ceiling:.0f}% is the ceiling"
        # A few launches and autograd bookkeeping on the host cost about as much as these kernels run.
        add_graph_row(rows, bce_with_logits, (z, y, w), grad)
        if weighted:
            # The data loader knows the batch's sum(w): passed in, w is read once (one pass over z, y, w).
            weight_sum = w.sum()

            def known_sum(logits, labels, weights):
                return bce_with_logits(logits, labels, weights, weight_sum=weight_sum)
            with dispatch.backend("triton"):
                eager_ms = median_ms(fwd_bwd(known_sum, (z, y, w), grad))
                graph_ms = median_ms(graphed(fwd_bwd(known_sum, (z, y, w), grad)))
            for suffix, ms, note in [("", eager_ms, "weight_sum given: w read once"),
                                     (", CUDA graph", graph_ms, "weight_sum given: w read once; CUDA graph")]:
                rows.append(Row("bce_with_logits", label + ", weight_sum given" + suffix, reference_row.dtype,
                                bytes_moved, ms, reference_row.eager_ms, reference_row.compiled_ms, note))


def bench_embedding(rows):
    dim = 64
    for label, num_rows, n_bags, bag_len in [("26 one-hot x 8192, 2.6M rows", 2_600_000, 26 * 8192, 1),
                                             ("8192 bags of 20, 1M rows", 1_000_000, 8192, 20),
                                             ("26 one-hot x 65536, 2.6M rows", 2_600_000, 26 * 65536, 1)]:
        offsets = torch.arange(0, n_bags * bag_len + 1, bag_len, device=DEVICE)
        indices = (torch.rand(n_bags * bag_len, device=DEVICE) ** 3 * num_rows).long()  # skewed: hot rows repeat
        grad = torch.randn(n_bags, dim, device=DEVICE)
        module = FusedEmbeddingBag(num_rows, dim, lr=0.01, device=DEVICE)
        weight, momentum = module.weight, module.momentum

        def ours():
            module(indices, offsets).backward(grad)

        def reference():
            embedding_bag_reference(weight, indices, offsets, "sum")
            rowwise_adagrad_reference(weight, momentum, indices, offsets, grad, "sum", 0.01, 1e-8)

        # The baseline this replaces: dense gradient of the whole table + fused Adam over every row.
        dense_weight = torch.nn.Parameter(weight.clone())
        adam = torch.optim.Adam([dense_weight], lr=0.01, fused=True)

        def dense_adam():
            out = torch.nn.functional.embedding_bag(indices, dense_weight, offsets, mode="sum",
                                                    include_last_offset=True)
            out.backward(grad)
            adam.step()
            adam.zero_grad(set_to_none=True)

        unique_rows = int(torch.unique(indices).numel())
        index_bytes = (indices.numel() + offsets.numel()) * 8
        # fwd: indices, offsets, each distinct row once, bags written; bwd: indices and offsets again, the bag
        # gradients, each distinct row read and written, its momentum read and written
        bytes_moved = (2 * index_bytes + (unique_rows * dim + n_bags * dim) * 4
                       + (n_bags * dim + 2 * unique_rows * dim + 2 * unique_rows) * 4)
        with dispatch.backend("triton"):
            ours_ms = median_ms(ours)
            graph_ms = median_ms(graphed(ours))
        eager_ms = median_ms(reference)
        dense_ms = median_ms(dense_adam)
        shape = f"{label}, {unique_rows} distinct"
        rows.append(Row("embedding_bag + rowwise adagrad", shape, "float32", bytes_moved, ours_ms, eager_ms, None,
                        f"dense grad + fused Adam over the table: {dense_ms:.3f} ms"))
        rows.append(Row("embedding_bag + rowwise adagrad", shape + ", CUDA graph", "float32", bytes_moved, graph_ms,
                        eager_ms, None, "ours replayed as a CUDA graph (GPU time; eager reference as above)"))


def bench_segment(rows):
    # The bfloat16 shape also at 8x its size (segments of ~100 rows either way): at 1M rows its three kernels
    # together move 128 MB in ~60 us, where each kernel's ramp and tail are a large share.
    shapes = [(1_000_000, 32, 100_000, torch.float32), (1_000_000, 16, 10_000, torch.bfloat16),
              (8_000_000, 16, 80_000, torch.bfloat16)]
    for n, d, segments, dtype in shapes:
        x = torch.randn(n, d, device=DEVICE, dtype=dtype, requires_grad=True)
        w = torch.rand(n, device=DEVICE, dtype=dtype, requires_grad=True)
        grad = torch.randn(segments, d, d, device=DEVICE, dtype=dtype)
        size = x.element_size()
        for ids_sorted in (False, True):
            ids = torch.randint(0, segments, (n,), device=DEVICE)
            if ids_sorted:
                ids = ids.sort().values
            # fwd: ids, x, w read, [S, d, d] written; bwd: ids, G (once per segment), x, w read, dx, dw written
            bytes_moved = 2 * n * ids.element_size() + (n * d + n + segments * d * d) * size \
                + (segments * d * d + 2 * n * d + 2 * n) * size

            def ours():
                out = segment_outer_sum(x, w, ids, segments, ids_sorted=ids_sorted)
                torch.autograd.grad(out, (x, w), grad)

            def reference():
                out = segment_outer_sum_reference(x, w, ids, segments)
                torch.autograd.grad(out, (x, w), grad)
            with dispatch.backend("triton"):
                ours_ms = median_ms(ours)
                graph_ms = median_ms(graphed(ours))  # the id-range check's host read is skipped in capture
                # The layout step alone (for unsorted ids the stable sort, then the segment starts): a caller
                # that reuses one set of ids sorts them once and passes ids_sorted=True.
                layout_ms = median_ms(graphed(lambda: _segment_layout(ids, segments, ids_sorted)))
            shape = f"N={n} d={d} S={segments}"
            ids_note = "ids sorted (ids_sorted=True)" if ids_sorted else "unsorted ids (sorted inside)"
            ids_note += f", layout {1e3 * layout_ms:.0f} us of it"
            eager_ms = median_ms(reference)
            dtype_name = str(dtype).replace("torch.", "")
            rows.append(Row("segment_outer_sum", shape, dtype_name, bytes_moved, ours_ms, eager_ms, None, ids_note))
            rows.append(Row("segment_outer_sum", shape + ", CUDA graph", dtype_name, bytes_moved, graph_ms, eager_ms,
                            None, ids_note + "; ours replayed as a CUDA graph (GPU time)"))


def write(rows: list[Row], copy_gbs: float, machine: dict) -> None:
    lines = [f"GPU {machine['gpu']}, torch {machine['torch']}, triton {machine['triton']}.", "",
             f"Copy bandwidth measured in this run (device-to-device, read + write): **{copy_gbs:.0f} GB/s**. "
             "Times are forward + backward, triton.testing.do_bench median, in ms. GB/s counts the fewest bytes "
             "the op must move; % copy = that over the copy bandwidth.", "",
             "| op | shape | dtype | ours ms | eager ms | compiled ms | vs eager | vs compiled | ours GB/s | % copy | note |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        gbs = r.bytes_moved / r.ours_ms / 1e6
        comp = f"{r.compiled_ms:.3f}" if r.compiled_ms else "n/a"
        vs_comp = f"{r.compiled_ms / r.ours_ms:.2f}x" if r.compiled_ms else "n/a"
        lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {r.ours_ms:.3f} | {r.eager_ms:.3f} | {comp} | "
                     f"{r.eager_ms / r.ours_ms:.2f}x | {vs_comp} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | {r.note} |")
    table = "\n".join(lines) + "\n"
    path = write_result("kernels", table, machine)
    print(path.read_text())
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ops = list(dict.fromkeys(r.op for r in rows))
    fig, axes = plt.subplots(1, len(ops), figsize=(5 * len(ops), 4.5), squeeze=False)
    axes = axes[0]
    for ax, op in zip(axes, ops):
        subset = [r for r in rows if r.op == op]
        xs = range(len(subset))
        width = 0.27
        ax.bar([x - width for x in xs], [r.ours_ms for r in subset], width, label="ours (Triton)")
        ax.bar(list(xs), [r.eager_ms for r in subset], width, label="PyTorch eager")
        ax.bar([x + width for x in xs], [r.compiled_ms or 0 for r in subset], width, label="torch.compile")
        ax.set_xticks(list(xs), [f"{r.shape}\n{r.dtype}" for r in subset], fontsize=7)
        ax.set_title(op)
        ax.set_ylabel("fwd+bwd ms (median)")
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{machine['gpu']}, torch {machine['torch']}, triton {machine['triton']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="cross,gate,bce,embedding,segment", help="comma-separated subset")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels needs a CUDA GPU")
    machine = describe_machine()
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth_gbs()
    benches = {"cross": bench_cross, "gate": bench_gate, "bce": bench_bce, "embedding": bench_embedding,
               "segment": bench_segment}
    rows: list[Row] = []
    for name in args.ops.split(","):
        benches[name](rows)
        torch.cuda.empty_cache()
    write(rows, copy_gbs, machine)


if __name__ == "__main__":
    main()
