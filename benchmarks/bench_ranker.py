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
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_dcn import ReferenceDCN, ReferenceShape, reference_step  # noqa: E402
from kernels.captured_step import CapturedStep  # noqa: E402
from training.ranker.embeddings import EmbeddingBags, HashedEmbeddings  # noqa: E402
from training.ranker.model import Ranker, RankerConfig  # noqa: E402
from training.ranker.train import weighted_bce  # noqa: E402

BATCH = 8192
DENSE_LR, EMBEDDING_LR = 1e-3, 0.05
CURVE_REFERENCE = "ours eager, PyTorch reference kernels"
CURVE_VARIANTS = (CURVE_REFERENCE, "ours CUDA graph (Triton)", "ours CUDA graph + compiled tower (Triton)")
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
        wide=False,  # the baseline architecture (DCNv2 + MLP) has no wide linear part
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


def measure(build, steps: int, warmup: int) -> tuple[float, float]:
    """(median seconds per step, peak GiB allocated while building and stepping)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    seconds = time_steps(build(), steps, warmup)
    return seconds, torch.cuda.max_memory_allocated() / 2**30


def reference_stepper(compiled: bool):
    shape = ReferenceShape()
    model = ReferenceDCN(shape).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    forward = torch.compile(model) if compiled else model
    sparse = torch.randint(0, shape.rows_per_table, (BATCH, shape.sparse_features), device="cuda")
    dense = torch.randn(BATCH, shape.dense_features, device="cuda")
    labels = (torch.rand(BATCH, device="cuda") < 0.2).float()
    return lambda: reference_step(forward, optimizer, sparse, dense, labels)


def ours_training_step(config: RankerConfig, compiled: bool, captured: bool, seed: int = 0):
    """One training step of the rankflow ranker as `step(sparse, dense, labels, weights, *bags) -> loss`.

    captured: the whole step (forward, backward with the fused table update, fused Adam) replays
    as a CUDA graph (kernels.captured_step); compiled: the dense tower goes through torch.compile.
    """
    torch.manual_seed(seed)
    model = Ranker(config).cuda().train()
    for table in model.modules():  # every table, the wide part's scalars too, as train_model does
        if isinstance(table, (HashedEmbeddings, EmbeddingBags)):
            table.enable_fused_optimizer(EMBEDDING_LR)
    if compiled:
        model.tower.compile()
    optimizer = torch.optim.Adam(model.dense_parameters(), lr=DENSE_LR, fused=True, capturable=captured)
    n_bags = len(config.bag_features)

    def step(sparse, dense, labels, weights, *bags):
        # No autocast weight cache: every weight is cast once per step anyway, and a CUDA graph
        # must not keep cached casts across capture.
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            logits = model(sparse, dense, list(bags[:n_bags]), list(bags[n_bags:]))
        loss = weighted_bce(logits, labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also steps the embedding tables (fused row-wise Adagrad)
        optimizer.step()
        return loss.detach()

    return CapturedStep(step, [optimizer]) if captured else step


def ours_stepper(config: RankerConfig, compiled: bool, captured: bool = False):
    step = ours_training_step(config, compiled, captured)
    sparse = torch.stack([torch.randint(0, b, (BATCH,), device="cuda") for b in config.sparse_buckets], dim=1)
    bag_values, bag_offsets = [], []
    for buckets in config.bag_buckets:
        lengths = torch.randint(0, 6, (BATCH,), device="cuda")
        bag_offsets.append(torch.cumsum(lengths, 0) - lengths)
        bag_values.append(torch.randint(0, buckets, (int(lengths.sum()),), device="cuda"))
    dense = torch.randn(BATCH, config.dense_dim, device="cuda")
    labels = (torch.rand(BATCH, device="cuda") < 0.2).float()
    weights = torch.ones(BATCH, device="cuda")
    return lambda: step(sparse, dense, labels, weights, *bag_values, *bag_offsets)


def loss_curve(variant: str, batches) -> dict:
    """Train a fresh baseline ranker on `batches` (one step each); losses and peak memory."""
    from kernels import dispatch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    backend = "reference" if variant == CURVE_REFERENCE else "auto"
    with dispatch.backend(backend):
        step = ours_training_step(baseline_config(False), compiled="compiled" in variant,
                                  captured="CUDA graph" in variant)
        weights = torch.ones(BATCH, device="cuda")
        losses = torch.stack([step(ids, dense, labels, weights) for ids, dense, labels in batches])
        losses = losses.float().cpu().tolist()
    return {"variant": variant, "losses": losses, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def profile_table(step, steps: int = 5) -> str:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)


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


def write_report(path: Path, header: str, steps: int, rows: list, curves: list, profiles: dict) -> None:
    reference_compiled = next((r[3] for r in rows if r[0] == "reference DCNv2 torch.compile"), None)
    lines = [f"# Ranker training step, batch {BATCH}", "", header, "",
             f"| variant | shape | ms/step (median of {steps}) | M samples/s | vs reference compiled | peak GiB | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, shape, seconds, throughput, peak, note in rows:
        ratio = f"{throughput / reference_compiled:.2f}x" if reference_compiled and shape == "baseline" else ""
        lines.append(f"| {name} | {shape} | {seconds * 1e3:.2f} | {throughput / 1e6:.3f} | {ratio} | {peak:.2f} | {note} |")
    if curves:
        reference = next((c["losses"] for c in curves if c["variant"] == CURVE_REFERENCE), None)
        lines += ["", f"## Loss curves: baseline DCN+gate ranker, {len(curves[0]['losses'])} steps, same batches",
                  "", "Fresh synthetic batches with signal every step (benchmarks/profile_step.make_batches). "
                  "The reference path runs the same model eagerly through the PyTorch references of every kernel "
                  "(kernels.dispatch backend 'reference', row-wise Adagrad by torch.unique/index_add_).", "",
                  "| variant | loss step 1 | mean loss, last 20 | max abs loss difference vs reference path | peak GiB |",
                  "|---|---:|---:|---:|---:|"]
        for curve in curves:
            losses = curve["losses"]
            gap = max(abs(a - b) for a, b in zip(losses, reference)) if reference else float("nan")
            lines.append(f"| {curve['variant']} | {losses[0]:.4f} | {sum(losses[-20:]) / 20:.4f} | {gap:.2e} | "
                         f"{curve['peak_gib']:.2f} |")
    for name, table in profiles.items():
        lines += ["", f"## torch.profiler, 5 steps: {name} (sorted by self CUDA time)", "", "```", table, "```"]
    path.write_text("\n".join(lines) + "\n")


def plot_curves(path: Path, curves: list, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        ax.plot(curve["losses"], label=curve["variant"], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (weighted BCE)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--curve-steps", type=int, default=200, help="loss-curve length (0: no curves)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of our eager and captured steps")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--only", default="", help="comma-separated variant names to run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_ranker needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    default_config = RankerConfig.from_spec(DEFAULT_SPEC)
    dcn = baseline_config(False)
    variants = [
        ("reference DCNv2 eager", "baseline", lambda: reference_stepper(False)),
        ("ours DCN+gate CUDA graph", "baseline", lambda: ours_stepper(dcn, False, captured=True)),
        ("ours DCN+gate eager", "baseline", lambda: ours_stepper(dcn, False)),
        ("reference DCNv2 torch.compile", "baseline", lambda: reference_stepper(True)),
        ("ours DCN+gate CUDA graph + compiled tower", "baseline", lambda: ours_stepper(dcn, True, captured=True)),
        ("ours DCN+gate compiled tower", "baseline", lambda: ours_stepper(dcn, True)),
        ("ours Residual DCN (attention) CUDA graph", "baseline", lambda: ours_stepper(baseline_config(True), False, True)),
        ("ours default config eager", "rankflow default", lambda: ours_stepper(default_config, False)),
        ("ours default config CUDA graph", "rankflow default", lambda: ours_stepper(default_config, False, True)),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {v[0] for v in variants}
        if unknown:
            sys.exit(f"--only: unknown variant(s) {sorted(unknown)}")
        variants = [v for v in variants if v[0] in wanted]
    header = machine()
    print(header, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = torch.cuda.get_device_name().replace(" ", "_")
    out_file = args.out / f"ranker-{slug}.md"
    rows, curves, profiles = [], [], {}
    for name, shape, build in variants:
        try:
            seconds, peak = measure(build, args.steps, args.warmup)
            note = ""
        except Exception as error:  # one failing variant must not lose the others' numbers
            traceback.print_exc()
            seconds, peak, note = float("nan"), float("nan"), f"failed: {type(error).__name__}: {str(error)[:120]}"
        rows.append((name, shape, seconds, BATCH / seconds, peak, note))
        print(f"{name:48s} {shape:16s} {seconds * 1e3:8.2f} ms/step {BATCH / seconds / 1e6:7.3f} M samples/s "
              f"peak {peak:.2f} GiB {note}", flush=True)
        write_report(out_file, header, args.steps, rows, curves, profiles)
    if args.curve_steps:
        from benchmarks.profile_step import Shape, make_batches

        batches = make_batches(Shape(batch=BATCH), count=args.curve_steps)
        for variant in CURVE_VARIANTS:
            try:
                curves.append(loss_curve(variant, batches))
                losses = curves[-1]["losses"]
                print(f"curve {variant}: {losses[0]:.4f} -> {sum(losses[-20:]) / 20:.4f}, "
                      f"peak {curves[-1]['peak_gib']:.2f} GiB", flush=True)
            except Exception:
                traceback.print_exc()
        del batches
        write_report(out_file, header, args.steps, rows, curves, profiles)
        (args.out / f"ranker-curves-{slug}.json").write_text(json.dumps(curves))
        plot_curves(args.out / f"ranker-curves-{slug}.png", curves, header)
    if args.profile:
        for name, build in (("ours DCN+gate eager", lambda: ours_stepper(dcn, False)),
                            ("ours DCN+gate CUDA graph", lambda: ours_stepper(dcn, False, captured=True))):
            try:
                profiles[name] = profile_table(build())
            except Exception:
                traceback.print_exc()
        write_report(out_file, header, args.steps, rows, curves, profiles)
    print(out_file.read_text())


if __name__ == "__main__":
    main()
