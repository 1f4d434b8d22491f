"""Training-step throughput of the rankflow ranker against the plain PyTorch DCNv2 reference.

Shapes: the issue's baseline (26 sparse x 100k rows x dim 64, 13 dense, 3 cross layers rank 256,
MLP 1024-1024-512, batch 8192) and the default rankflow shape (RankerConfig.from_spec of the
demo training set's spec). A step is forward + backward + optimiser (bf16 autocast, fused Adam for
dense weights; ours trains its tables with kernels.embedding's fused row-wise Adagrad). Inputs are
random and already on the GPU (the step is timed, not the loader). Median of 30 timed steps after
warm-up; every variant runs in this one process, so the numbers compare.

    PYTHONPATH=. python3 benchmarks/bench_ranker.py [--steps 30] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_dcn import ReferenceDCN, ReferenceShape, reference_step  # noqa: E402
from training.ranker.model import Ranker, RankerConfig  # noqa: E402
from training.ranker.train import weighted_bce  # noqa: E402

BATCH = 8192
# The demo training set's columns (features engineer's spec): ids, 7 categoricals, 2 skill bags,
# ~30 dense features (windowed counts and rates, recency, affinities, GLMix score), 64-d meta embedding.
DEFAULT_SPEC = {
    "label": "label", "weight": "weight", "member": "member_id", "item": "item_id",
    "categorical": ["m_industry", "m_seniority", "m_region", "j_company", "j_industry", "j_seniority", "j_region"],
    "multi_valued": ["m_skills", "j_skills"],
    "dense": [f"dense_{i}" for i in range(30)],
    "embeddings": {"meta_embedding": 64},
}


def baseline_config(attention: bool) -> RankerConfig:
    s = ReferenceShape()
    return RankerConfig(
        sparse_features=tuple(f"f{i}" for i in range(s.sparse_features)),
        sparse_buckets=(s.rows_per_table,) * s.sparse_features,
        dense_features=tuple(f"d{i}" for i in range(s.dense_features)),
        embedding_dim=s.embedding_dim, cross_layers=s.cross_layers, cross_rank=s.cross_rank,
        cross_attention=attention, mlp_widths=s.mlp, dense_gating=True,
    )


def time_steps(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_reference(compiled: bool, steps: int, warmup: int) -> float:
    shape = ReferenceShape()
    model = ReferenceDCN(shape).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    forward = torch.compile(model) if compiled else model
    sparse = torch.randint(0, shape.rows_per_table, (BATCH, shape.sparse_features), device="cuda")
    dense = torch.randn(BATCH, shape.dense_features, device="cuda")
    labels = (torch.rand(BATCH, device="cuda") < 0.2).float()
    return time_steps(lambda: reference_step(forward, optimizer, sparse, dense, labels), steps, warmup)


def bench_ours(config: RankerConfig, compiled: bool, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = Ranker(config).cuda().train()
    model.embeddings.enable_fused_optimizer(0.05)
    model.bags.enable_fused_optimizer(0.05)
    if compiled:
        model.tower.compile()
    optimizer = torch.optim.Adam(model.dense_parameters(), lr=1e-3, fused=True)
    sparse = torch.stack([torch.randint(0, b, (BATCH,), device="cuda") for b in config.sparse_buckets], dim=1)
    bag_values, bag_offsets = [], []
    for buckets in config.bag_buckets:
        lengths = torch.randint(0, 6, (BATCH,), device="cuda")
        bag_offsets.append(torch.cumsum(lengths, 0) - lengths)
        bag_values.append(torch.randint(0, buckets, (int(lengths.sum()),), device="cuda"))
    dense = torch.randn(BATCH, config.dense_dim, device="cuda")
    labels = (torch.rand(BATCH, device="cuda") < 0.2).float()
    weights = torch.ones(BATCH, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(sparse, dense, bag_values, bag_offsets)
        loss = weighted_bce(logits, labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also steps the embedding tables (fused row-wise Adagrad)
        optimizer.step()

    return time_steps(step, steps, warmup)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    triton_version = "absent"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        pass
    return (f"GPU {torch.cuda.get_device_name()}; CPU {cpu} ({os.cpu_count()} cores); torch {torch.__version__}; "
            f"triton {triton_version}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", default="", help="comma-separated variant names to run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_ranker needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    default_config = RankerConfig.from_spec(DEFAULT_SPEC)
    variants = [
        ("reference DCNv2 eager", "baseline", lambda: bench_reference(False, args.steps, args.warmup)),
        ("reference DCNv2 torch.compile", "baseline", lambda: bench_reference(True, args.steps, args.warmup)),
        ("ours DCN+gate eager", "baseline", lambda: bench_ours(baseline_config(False), False, args.steps, args.warmup)),
        ("ours DCN+gate compiled tower", "baseline", lambda: bench_ours(baseline_config(False), True, args.steps, args.warmup)),
        ("ours Residual DCN (attention) compiled tower", "baseline", lambda: bench_ours(baseline_config(True), True, args.steps, args.warmup)),
        ("ours default config eager", "rankflow default", lambda: bench_ours(default_config, False, args.steps, args.warmup)),
        ("ours default config compiled tower", "rankflow default", lambda: bench_ours(default_config, True, args.steps, args.warmup)),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        variants = [v for v in variants if v[0] in wanted]
    header = machine()
    print(header, flush=True)
    rows, reference_compiled = [], None
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"ranker-{torch.cuda.get_device_name().replace(' ', '_')}.md"
    for name, shape, run in variants:
        try:
            seconds = run()
            throughput = BATCH / seconds
            note = ""
        except Exception as error:  # one failing variant must not lose the others' numbers
            traceback.print_exc()
            seconds, throughput, note = float("nan"), float("nan"), f"failed: {type(error).__name__}: {str(error)[:120]}"
        if name == "reference DCNv2 torch.compile":
            reference_compiled = throughput
        rows.append((name, shape, seconds, throughput, note))
        print(f"{name:48s} {shape:16s} {seconds * 1e3:8.2f} ms/step {throughput / 1e6:7.3f} M samples/s {note}", flush=True)
        torch.cuda.empty_cache()
        lines = [f"# Ranker training step, batch {BATCH}", "", header, "",
                 "| variant | shape | ms/step (median of %d) | M samples/s | vs reference compiled | note |" % args.steps,
                 "|---|---|---:|---:|---:|---|"]
        for n, s, sec, thr, nt in rows:
            ratio = f"{thr / reference_compiled:.2f}x" if reference_compiled and s == "baseline" else ""
            lines.append(f"| {n} | {s} | {sec * 1e3:.2f} | {thr / 1e6:.3f} | {ratio} | {nt} |")
        out_file.write_text("\n".join(lines) + "\n")
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
