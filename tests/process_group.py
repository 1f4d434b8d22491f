"""Run a function in several spawned processes joined by a gloo process group (tests of data-parallel code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: Path, out, received, target: Callable, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out.put((rank, target(rank, *args)))
        # Tensors in the queue are passed as file descriptors that this process serves until the parent has
        # taken them: exiting first made the parent's get fail now and then (FileNotFoundError).
        received.wait(timeout=120)
    finally:
        dist.destroy_process_group()


def run_ranks(target: Callable[..., Any], world: int, scratch: Path, *args: Any) -> dict[int, Any]:
    """target(rank, *args) in `world` processes (a module-level function: spawn imports it); rank -> its result."""
    context = mp.get_context("spawn")
    out, received = context.Queue(), context.Event()
    workers = [context.Process(target=_worker, args=(rank, world, scratch / "init", out, received, target, args))
               for rank in range(world)]
    for worker in workers:
        worker.start()
    results = dict(out.get(timeout=120) for _ in workers)
    received.set()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0, f"rank {workers.index(worker)} exited with {worker.exitcode}"
    return results
