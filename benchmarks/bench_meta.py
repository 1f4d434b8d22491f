"""Members adapted per second by the daily meta-embedding refresh, and first- vs second-order MAML step time.

    PYTHONPATH=. python benchmarks/bench_meta.py --device cpu             # 2 CPU cores
    PYTHONPATH=. python benchmarks/bench_meta.py --device cuda            # one GPU (1M active members)

Refresh problem: `members` active members, each with a log-normal number of events in the 14-day window
(mean --events-per-member, at least 1), job inputs shaped like the synthetic marketplace's (3 hashed
categoricals, a skill bag of 8, 1 dense feature); the default sub-network (33-float embeddings), k = 5
inner steps, support capped at 48 recent + 16 sampled events. Timed separately, each after a warm-up:
  build   support-set construction (numpy, host CPU: sort, cap, seeded sample)    training/meta/tasks.py
  copy    event table host -> device
  adapt   gather + body + vmapped k-step adaptation + flatten + copy back, in chunks   training/meta/adapt.py
Members/s = members / (build + copy + adapt). The orders table times one meta-training outer step
(batch of members, Adam) with first- and second-order MAML on the same random data.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, write_result  # noqa: E402


def make_events(members: int, events_per_member: float, seed: int = 0):
    from training.meta.tasks import Interactions

    rng = np.random.default_rng(seed)
    sigma = 1.0
    counts = np.maximum(1, np.round(rng.lognormal(np.log(events_per_member) - sigma**2 / 2, sigma, members)))
    member_id = np.repeat(np.arange(members, dtype=np.int64), counts.astype(np.int64))
    n = member_id.size
    day = rng.integers(100, 114, n)
    return Interactions(member_id=member_id, time=day * 86_400_000_000 + rng.integers(0, 86_400_000_000, n),
                        day=day, categorical=rng.integers(1, 4096, (n, 3)),
                        multi_valued=rng.integers(0, 4096, (n, 1, 8)), dense=rng.normal(size=(n, 1)).astype(np.float32),
                        label=(rng.random(n) < 0.08).astype(np.float32), weight=np.ones(n, np.float32))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def refresh(net, interactions, members, device, config, chunk: int):
    """One full refresh of `members`; returns (embeddings, build_s, copy_s, adapt_s)."""
    import torch

    from training.meta.adapt import meta_embeddings
    from training.meta.tasks import embed_set, support_sets

    started = time.perf_counter()
    tasks = support_sets(interactions, members, 113, config.tasks)
    build = time.perf_counter() - started
    started = time.perf_counter()
    inputs = interactions.job_inputs().to(device)
    labels, weights = (t.to(device) for t in interactions.targets())
    support = torch.from_numpy(tasks.support).to(device)
    sync(device)
    copy = time.perf_counter() - started
    started = time.perf_counter()
    out = []
    with torch.no_grad():
        for start in range(0, len(tasks), chunk):
            hidden, support_labels, support_weights = embed_set(net, support[start:start + chunk], inputs,
                                                                labels, weights)
            embedding, _ = meta_embeddings(net, hidden, support_labels, support_weights,
                                           config.inner, chunk_members=chunk)
            out.append(embedding.cpu())
    sync(device)
    adapt = time.perf_counter() - started
    return torch.cat(out), build, copy, adapt


def bench_refresh(device, sizes: list[int], events_per_member: float, chunk: int, threads: int) -> list[str]:
    import torch

    from training.meta.config import MetaConfig
    from training.meta.subnetwork import SubNetwork, SubNetworkConfig

    config = MetaConfig(subnetwork=SubNetworkConfig(dense_columns=("j_salary",)))
    torch.manual_seed(0)
    net = SubNetwork(config.subnetwork).to(device).eval()
    warm = make_events(2_000, events_per_member, seed=1)
    refresh(net, warm, np.arange(2_000), device, config, chunk)
    rows = ["| threads | active members | events in window | build (s) | copy (s) | adapt (s) | total (s) | members/s (adapt) "
            "| members/s (total) | embedding length | all finite |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for members in sizes:
        interactions = make_events(members, events_per_member)
        embeddings, build, copy, adapt = refresh(net, interactions, np.arange(members), device, config, chunk)
        total = build + copy + adapt
        rows.append(f"| {threads} | {members:,} | {len(interactions):,} | {build:.2f} | {copy:.2f} | {adapt:.2f} | {total:.2f} "
                    f"| {members / adapt:,.0f} | {members / total:,.0f} | {embeddings.shape[1]} "
                    f"| {bool(torch.isfinite(embeddings).all())} |")
        print(rows[-1], flush=True)
        del interactions, embeddings
    return rows


def bench_orders(device, batch_sizes: list[int], steps: int, threads: int) -> list[str]:
    import torch

    from training.meta.maml import MetaTrainConfig, meta_train
    from training.meta.subnetwork import SubNetwork, SubNetworkConfig
    from training.meta.tasks import TaskConfig, concat_tasks, query_day_tasks

    rows = ["| threads | order | members per batch | ms per outer step |", "|---|---|---|---|"]
    interactions = make_events(20_000, 20.0, seed=2)
    tasks = concat_tasks([query_day_tasks(interactions, d, TaskConfig()) for d in (110, 111, 112, 113)])
    inputs = interactions.job_inputs().to(device)
    labels, weights = (t.to(device) for t in interactions.targets())
    for batch in batch_sizes:
        for first_order in (True, False):
            torch.manual_seed(0)
            net = SubNetwork(SubNetworkConfig(dense_columns=("j_salary",))).to(device)
            history = meta_train(net, inputs, labels, weights, tasks,
                                 MetaTrainConfig(outer_steps=steps, members_per_batch=batch, first_order=first_order))
            rows.append(f"| {threads} | {'first' if first_order else 'second'} | {batch} | {history.seconds_per_step * 1000:.1f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--members", type=int, nargs="*", help="active member counts (default: cpu 20k, cuda 100k 1M)")
    parser.add_argument("--events-per-member", type=float, default=20.0)
    parser.add_argument("--chunk", type=int, default=None, help="members per adaptation chunk")
    parser.add_argument("--order-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="*", help="torch CPU threads to try (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also copy the result file here")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    device = torch.device(args.device)
    sizes = args.members or ([20_000] if args.device == "cpu" else [100_000, 1_000_000])
    chunk = args.chunk or (16_384 if args.device == "cpu" else 131_072)
    machine = describe_machine()
    print(f"threads: {torch.get_num_threads()}  device: {machine['gpu'] or machine['cpu_model']}")
    refresh_rows, order_rows = [], []
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        rows = bench_refresh(device, sizes, args.events_per_member, chunk, threads)
        refresh_rows += rows if not refresh_rows else rows[2:]
        rows = bench_orders(device, [256] if args.device == "cpu" else [256, 4096], args.order_steps, threads)
        order_rows += rows if not order_rows else rows[2:]
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    table = "\n".join([
        f"Load average at the end (1, 5, 15 min): {load}; a shared machine's numbers are lower bounds.", "",
        f"Daily refresh on {args.device}, chunk {chunk} members, "
        f"mean {args.events_per_member:g} events per member in the window, support cap 64, k = 5:",
        "", *refresh_rows, "",
        f"Meta-training outer step (median of {args.order_steps - 1} steps after the first), support cap 64, "
        "query cap 32, k = 5:", "", *order_rows])
    print(table)
    target = write_result("meta", table, machine, copy_to=args.out)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
