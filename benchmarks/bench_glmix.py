"""Events per second of one GLMix daily random-effect update, batched (torch) vs the per-entity reference loop.

    PYTHONPATH=. python benchmarks/bench_glmix.py --device cpu            # 2 CPU cores
    PYTHONPATH=. python benchmarks/bench_glmix.py --device cuda           # one GPU

Problem: `entities` members (100k and 1M), events per member log-normal with mean `--events-per-entity`
(10 -> 1M and 10M events), d = 16 and 32, full precision, float32, every member already in yesterday's
state (prior = a full precision matrix, so the prior gather and the state merge are timed too).
Timed: `update_random_effects` end to end (cleaning, sorting, chunks of Newton steps, state merge), after
one warm-up call on a small problem (Triton compilation). The reference (tests/training/glmix_reference.py:
numpy/scipy, one entity at a time, float64) is timed on a random sample of entities and extrapolated per
entity to all of them; the table says so. Both answers are compared on that sample (max |mean diff|).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import REPO_ROOT, describe_machine, write_result  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "tests" / "training"))


def make_problem(entities: int, dim: int, events_per_entity: float, seed: int = 0):
    """Yesterday's state for every entity + today's events (numpy), float32."""
    rng = np.random.default_rng(seed)
    sigma = 1.0
    counts = np.maximum(1, np.round(rng.lognormal(np.log(events_per_entity) - sigma**2 / 2, sigma, entities))).astype(
        np.int64)
    ids = np.repeat(np.arange(entities, dtype=np.int64), counts)
    x = rng.standard_normal((ids.size, dim), dtype=np.float32) * 0.5
    x[:, 0] = 1.0
    truth = rng.standard_normal((entities, dim), dtype=np.float32) * 0.5
    offsets = rng.standard_normal(ids.size, dtype=np.float32) * 0.5 - 2.0
    logits = offsets + np.einsum("ij,ij->i", x, truth[ids])
    labels = (rng.random(ids.size, dtype=np.float32) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    order = rng.permutation(ids.size)  # events arrive in time order, not by entity
    prior_mean = (truth + rng.standard_normal(truth.shape, dtype=np.float32) * 0.3).astype(np.float32)
    prior_scale = rng.uniform(1.0, 3.0, (entities, dim)).astype(np.float32)
    return ids[order], x[order], labels[order], offsets[order], prior_mean, prior_scale


def run_batched(problem, dim, device, chunk_elements, **options):
    import torch

    from training.glmix.random_effects import EntityEvents, RandomEffectConfig, RandomEffectState, update_random_effects

    ids, x, labels, offsets, prior_mean, prior_scale = problem
    entities = prior_mean.shape[0]
    state = RandomEffectState(torch.arange(entities, device=device), torch.from_numpy(prior_mean).to(device),
                              torch.diag_embed(torch.from_numpy(prior_scale)).to(device))
    events = EntityEvents(torch.from_numpy(ids).to(device), torch.from_numpy(x).to(device),
                          torch.from_numpy(labels).to(device), None, torch.from_numpy(offsets).to(device))
    config = RandomEffectConfig(dim=dim, covariance="full", chunk_elements=chunk_elements, **options)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    updated, summary = update_random_effects(state, events, config)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, updated, summary


def run_reference(problem, sample_size, seed=1):
    """Per-entity reference on a random sample of entities: (seconds per entity, {entity: mean}).

    One pass over the sample; `main` times several and keeps the fastest (the reference's cost moved 2x
    between single passes on the 2-core VM, and the fastest pass makes the speed-up the conservative one).
    """
    from glmix_reference import laplace_update

    ids, x, labels, offsets, prior_mean, prior_scale = problem
    rng = np.random.default_rng(seed)
    sample = rng.choice(prior_mean.shape[0], size=min(sample_size, prior_mean.shape[0]), replace=False)
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], np.arange(prior_mean.shape[0] + 1))
    means, elapsed = {}, 0.0
    for entity in sample:
        rows = order[starts[entity] : starts[entity + 1]]
        started = time.perf_counter()
        mean, _, _ = laplace_update(x[rows].astype(np.float64), labels[rows].astype(np.float64),
                                    np.ones(rows.size), offsets[rows].astype(np.float64),
                                    prior_mean[entity].astype(np.float64), np.diag(prior_scale[entity]).astype(np.float64))
        elapsed += time.perf_counter() - started
        means[int(entity)] = mean
    return elapsed / sample.size, means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--entities", default="100000,1000000")
    parser.add_argument("--dims", default="16,32")
    parser.add_argument("--events-per-entity", type=float, default=10.0)
    parser.add_argument("--reference-sample", type=int, default=300)
    parser.add_argument("--reference-passes", type=int, default=3,
                        help="timed passes of the reference over its sample; the fastest is used")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is 2 cores)")
    parser.add_argument("--chunk-elements", type=float, default=None,
                        help="RandomEffectConfig.chunk_elements (default: the library's, 2^24 CPU / 2^32 CUDA)")
    parser.add_argument("--outer", default="auto", choices=["auto", "bucketed"],
                        help="Hessian outer sums: auto = the Triton kernel on CUDA float32 (kernels.segment), "
                             "bucketed = batched matmul over power-of-two length buckets everywhere")
    parser.add_argument("--workers", type=int, default=1,
                        help="RandomEffectConfig.workers: threads over independent batches of entities (CPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs of the batched update per row, the median is reported beside the "
                             "first (default 3: the first large call also pays the allocator's growth, on this VM "
                             "mostly the kernel faulting in fresh pages)")
    parser.add_argument("--primal-too", action="store_true",
                        help="CPU: also time the primal form alone (dual_below=0) on the same problem")
    parser.add_argument("--out-dir", type=Path, default=None, help="also copy the result file here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.outer == "bucketed":
        from kernels.dispatch import set_backend

        set_backend("reference")  # the kernels' dispatch then declines, and GLMix uses its bucketed matmuls
    machine = describe_machine()
    chunk_elements = int(args.chunk_elements) if args.chunk_elements else None
    # Warm-up: Triton compilation, cuSOLVER / MKL initialisation.
    run_batched(make_problem(2000, 16, args.events_per_entity), 16, args.device, chunk_elements)
    run_batched(make_problem(2000, 32, args.events_per_entity), 32, args.device, chunk_elements)

    rows = []
    for entities in (int(v) for v in args.entities.split(",")):
        for dim in (int(v) for v in args.dims.split(",")):
            problem = make_problem(entities, dim, args.events_per_entity)
            events = problem[0].size
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            repeats = args.repeats or 3
            times = []
            for _ in range(repeats):
                updated = None  # free the previous run's state first: the peak is one run's
                elapsed, updated, summary = run_batched(problem, dim, args.device, chunk_elements, workers=args.workers)
                times.append(elapsed)
            seconds = float(np.median(times))
            peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
            passes = [run_reference(problem, args.reference_sample) for _ in range(max(1, args.reference_passes))]
            per_entity, reference = min(passes, key=lambda result: result[0])
            slowest = max(result[0] for result in passes)
            sample = torch.tensor(sorted(reference))
            batched = updated.mean[sample.to(updated.mean.device)].double().cpu().numpy()
            updated = None  # one state at a time in memory (1M x 32 x 32 precisions are 4 GiB)
            primal_seconds = float("nan")
            if args.primal_too:
                primal_seconds = run_batched(problem, dim, args.device, chunk_elements, dual_below=0,
                                             workers=args.workers)[0]
            diff = float(np.max(np.abs(batched - np.stack([reference[i] for i in sorted(reference)]))))
            reference_seconds = per_entity * entities
            row = (entities, dim, events, seconds, events / seconds, reference_seconds, events / reference_seconds,
                   reference_seconds / seconds, times[0], reference_seconds / times[0], per_entity * 1e6,
                   slowest * 1e6, diff, summary.newton_iterations_max, summary.not_converged, peak, primal_seconds)
            rows.append(row)
            print("entities={} d={} events={} batched {:.3f}s ({:.3g} ev/s)  reference~{:.1f}s ({:.3g} ev/s)  "
                  "speed-up {:.0f}x  first call {:.3f}s ({:.0f}x)  reference {:.0f}-{:.0f} us/entity  max|dmean| {:.1e}  newton<= {}  "
                  "unconverged {}  peak {:.1f} GiB  "
                  "primal form only {:.3f}s".format(*row),
                  flush=True)
            del problem, updated
            if args.device == "cuda":
                torch.cuda.empty_cache()

    threads = (f"{args.threads} torch threads, {args.workers} worker thread(s)" if args.device == "cpu"
               else "float32 on the GPU")
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    table = "\n".join([
        f"One daily update (`update_random_effects`, full precision, float32, {threads}; median of "
        f"{args.repeats or 3} timed runs in one process, the first of them also shown); every entity in "
        "yesterday's state; events per entity log-normal, mean "
        f"{args.events_per_entity:g}. Reference = per-entity numpy/scipy loop (float64), timed on "
        f"{args.reference_sample} random entities and extrapolated per entity to all (not run in full); "
        f"the fastest of {max(1, args.reference_passes)} passes over that sample is used, the slowest is shown beside it. "
        "max|dmean| = largest difference of posterior means between the two on that sample (float32 vs float64). "
        f"torch's THP_MEM_ALLOC_ENABLE (huge pages for CPU tensors of 2 MB or more): {thp}.",
        "",
        "| entities | d | events | batched s | batched events/s | reference s (extrapolated) | reference events/s "
        "| speed-up | first call s | speed-up, first call | reference us/entity (fastest pass) | slowest pass | max abs diff of means | Newton steps (max) "
        "| not converged | peak GPU GiB | batched s, primal form only |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
        *("| {:,} | {} | {:,} | {:.3f} | {:,.0f} | {:.1f} | {:,.0f} | {:.0f}x | {:.3f} | {:.0f}x | {:.0f} | {:.0f} | {:.1e} | {} | {} "
          "| {:.1f} "
          "| {:.3f} |".format(*r)
          for r in rows),
    ])
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    table = f"Hessian outer sums: {args.outer}. Load average at the end (1/5/15 min): {load}.\n\n" + table
    target = write_result("glmix" if args.outer == "auto" else "glmix-bucketed", table, machine, copy_to=args.out_dir)
    print(table)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
