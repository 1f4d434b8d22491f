"""Training loop of the ranker: one script for CPU, one GPU and several (torchrun, data parallel).

    loss(theta) = sum_i w_i BCE(s_theta(x_i), y_i) / sum_i w_i   [+ lambda ||theta - theta_prev||^2 when warm]

- Precision: bf16 autocast on CUDA, float32 on CPU; the loss is always reduced in float32.
- Optimisers: row-wise Adagrad for the embedding tables (sparse rows, optim.py), Adam (fused on
  CUDA) for everything else.
- Determinism: parameters and the row order come from `seed` only (data.stream_batches).
- Incremental training (LiRank, "Incremental Training"): warm start from the serving checkpoint,
  train on the newest day(s) only, optionally pulled towards the previous weights by lambda.
- Distributed (data parallel): under `torchrun --nproc_per_node=N` each process takes rows rank::N of
  every global batch, starts from rank 0's parameters and buffers, and averages its gradients with the
  others' after every backward (one all-reduce of the flattened gradients: what DistributedDataParallel
  computes, without its host-side bucket bookkeeping, which a CUDA graph cannot replay), so N processes
  follow the single-process loss curve. With the fused embedding optimiser the replicated tables stay
  equal because every backward gathers all ranks' rows first (kernels.embedding); the ranks then pad
  their shards to one shape (every rank draws the same global batch, so each counts every shard's bag
  values itself: no host-side collective per step). Without it, the tables
  produce dense gradients, averaged like the rest, for optim.RowWiseAdagrad.
- CUDA graphs: on GPUs with the fused embedding optimiser (one process or several), every step after a few
  eager warm-up steps is a replayed CUDA graph (under torchrun, the gathers and the all-reduce too). Graphs
  replay fixed shapes, so each batch is padded to `batch_size` (its shard's share under torchrun) + 1 rows
  with zero-weight rows and its bag values to a power-of-two capacity, the spare ones first as -1 (`fixed_shape`):
  the weighted loss, the dense gradients and the tables' updates are those of the unpadded batch.
- Calibration: a pseudo-random `holdout_fraction` of the rows of the newest `calibration_days` days is
  never trained on (data.split_holdout); early stopping scores it, and the isotonic layer is fitted on
  it after training.

Run as a script:  python -m training.ranker.train --training-set DIR --first-day D1 --last-day D2 --out CKPT
(or torchrun --nproc_per_node=2 -m training.ranker.train ... with the same flags).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from training.ranker import data
from training.ranker.embeddings import EmbeddingBags, HashedEmbeddings, adagrad_accumulators
from training.ranker.model import Ranker, RankerConfig
from training.ranker.optim import RowWiseAdagrad

from kernels.bce import bce_with_logits
from kernels.captured_step import CapturedStep


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults train the demo-size ranker on CPU in about a minute.

    `quality_config` (tuned on the demo marketplace) is what benchmarks/ranker_quality.py, the ranker stage
    (`rankflow train`, `rankflow demo`) use; these defaults stay the small-data ones of the unit tests.
    """

    epochs: int = 2
    warm_start_epochs: int = 1
    batch_size: int = 512
    dense_lr: float = 1e-3
    embedding_lr: float = 0.05
    # Adam lr of the position logits (position.py): Adam moves a parameter by about lr per step, and these
    # few biases must travel ~1-2 logits in a few hundred steps, far more than any tower weight.
    position_lr: float = 0.03
    # lambda of a warm start's pull towards the serving model's weights (every parameter, tables included: with
    # lambda > 0 the tables train by row gradients, as the fused optimiser cannot see the pull's gradient).
    warm_start_l2: float = 0.0
    # A warm start continues the serving model's row-wise Adagrad with its accumulators a_i scaled by this
    # (1: exactly where it stopped; 0: a fresh optimiser). See embeddings.py for why not 0.
    warm_start_accumulator_scale: float = 1.0
    # ... and the dense parameters' (tower, wide dense weights, position) Adam at dense_lr and position_lr
    # times this. Adam restarts with empty moments and moves every weight by about lr per step, whatever its
    # gradient: a tower fitted on many days should move only a little on one more.
    warm_start_dense_lr_scale: float = 1.0
    dense_weight_decay: float = 0.0      # AdamW decoupled decay of the dense parameters
    # L2 on embedding rows, applied to the rows a batch touches (lambda * E_i added to g_i). On a GPU the fused
    # kernel applies it; on the CPU the "rowwise" optimiser does (there the fused path is a PyTorch reference,
    # and this keeps CPU training, and the CPU results recorded with it, as they were).
    embedding_weight_decay: float = 0.0
    # Keep the epoch whose weights give the lowest weighted log loss on the calibration holdout
    # (scored after every epoch); later epochs that only fit noise are discarded.
    early_stopping: bool = True
    patience: int = 1                    # epochs without improvement before training stops
    holdout_fraction: float = 0.2
    calibration_days: int = 1            # the holdout is a holdout_fraction of the rows of each of the newest N days (0: all)
    seed: int = 0
    device: str = "auto"                 # "auto" | "cpu" | "cuda" | "cuda:N"
    compile: bool = False                # torch.compile the model (GPU)
    # "fused": kernels.embedding row-wise Adagrad inside the backward (under torchrun every rank's rows are
    # gathered first); "rowwise": row gradients + optim.RowWiseAdagrad (also used on CPU with an embedding L2).
    embedding_optimizer: str = "fused"
    log_every: int = 10                  # steps between loss records (1 = every step)
    # CUDA GPUs with the fused embedding optimiser (one process or torchrun): replay each training step as a CUDA graph
    # (kernels.captured_step). The eager step is host-bound there (16 ms of Python and launches per step
    # against 0.75 ms of GPU work, demo data on an H200); batches are padded to one shape with zero-weight rows.
    cuda_graph: bool = True
    # GPUs: threads that gather the next batches' rows while the step runs (torch releases the GIL); the
    # CPU gathers each batch in the training thread.
    loader_threads: int = 2
    chunk_rows: int = 1 << 18
    # Encoded training rows kept in memory after the first epoch when they fit (data.ChunkCache; 0: stream
    # every epoch from the files). 2M rows of the demo's layout take about 0.9 GB (455 bytes a row).
    cache_rows: int = 1 << 21
    normalizer_rows: int = 1 << 16


def quality_config(**overrides: Any) -> TrainConfig:
    """Settings chosen on the default demo marketplace's validation day (benchmarks/ranker_quality.py --validation).

    Chosen with day 10 (the evaluation day) left out: trained on days 1-8, scored on day 9. Embedding lr
    0.1 (0.7936 next-day AUC, seed 0) over 0.05 (0.7924) and 0.2 (0.7909, the earlier H100 sweep's
    choice, made before the wide part existed), row L2 1e-3 (1e-2: 0.7892); `epochs` is an upper bound
    that early stopping on the holdout cuts. Held out: 10 % of the rows of every training day (18,000
    rows on 10 days): the calibration's level is then the mean over all days, not one or four days'
    apply-rate noise (a calibration fitted on the last 20 % of 4 days moved every prediction of the
    next day by their +0.004 surplus over the true rate). Warm start: the dense parameters at 0.1 of their
    learning rates (warm minus full AUC on day 9 with seeds 0 / 1: -0.0000 / -0.0008, against -0.0026 /
    -0.0011 at the full rates).
    """
    values = {"epochs": 8, "embedding_lr": 0.1, "embedding_weight_decay": 1e-3, "calibration_days": 0,
              "holdout_fraction": 0.1, "warm_start_dense_lr_scale": 0.1}
    return TrainConfig(**{**values, **overrides})


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits among the torchrun workers (1 process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)   # step, epoch, rows, loss, seconds
    seconds: float = 0.0
    rows: int = 0                                                    # samples stepped on (rows x epochs)
    holdout: list = field(default_factory=list)                      # data.RowRange of the calibration rows
    holdout_losses: list[float] = field(default_factory=list)        # per epoch, with early stopping
    best_epoch: int | None = None                                    # the epoch whose weights were kept
    graphed_steps: int = 0                                           # steps replayed as CUDA graphs

    @property
    def samples_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def distributed_from_environment(backend: str | None = None) -> DistributedContext:
    """Join the torchrun process group when launched by torchrun (its env vars are the boundary)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if chosen == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=chosen)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def resolve_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{context.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i BCE(s_i, y_i) / sum_i w_i in float32."""
    return bce_with_logits(logits.float(), labels.float(), weights.float())


def _proximal_penalty(model: nn.Module, prior: dict[str, torch.Tensor]) -> torch.Tensor:
    terms = [(p - prior[name]).pow(2).sum() for name, p in model.named_parameters() if name in prior]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def fixed_shape(batch: data.Batch, rows: int, capacities: list[int], pin_memory: bool = False) -> data.Batch:
    """`batch` (at most `rows` rows) padded to `rows` + 1 rows and bag i's values to `capacities[i]`.

    Padding rows have weight 0, label 0, sparse ids -1, dense 0, position 0 (read as 1) and empty bags. A
    weight-0 row adds nothing to the weighted loss, so its logit's gradient is exactly 0, and so are its
    contributions to the dense gradients. The padding bag values come first, as -1 before the first bag. In
    the fused tables -1 is no row, read or updated (kernels.embedding): an id of 0 there would have given the
    "missing" rows the L2 of a touched row at every step. The model has no operation across rows, so the
    real rows' outputs and the step are unchanged.

    Every tensor is written once into its padded buffer, in page-locked memory with `pin_memory` (for an
    asynchronous copy to the GPU): no concatenation followed by a second copy into pinned memory.
    """
    n, pad = len(batch), rows + 1 - len(batch)
    if pad < 1:
        raise ValueError(f"fixed_shape: batch of {n} rows does not fit {rows} rows plus the padding row")

    def buffer(like: torch.Tensor, length: int) -> torch.Tensor:
        return torch.empty((length, *like.shape[1:]), dtype=like.dtype, pin_memory=pin_memory)

    def padded(tensor: torch.Tensor, value: float = 0) -> torch.Tensor:
        out = buffer(tensor, rows + 1)
        out[:n].copy_(tensor)
        out[n:].fill_(value)
        return out

    values, offsets = [], []
    for bag_values, bag_offsets, capacity in zip(batch.bag_values, batch.bag_offsets, capacities):
        if bag_values.numel() > capacity:
            raise ValueError(f"fixed_shape: {bag_values.numel()} bag values exceed the capacity {capacity}")
        spare = capacity - bag_values.numel()
        bag = buffer(bag_values, capacity)
        bag[:spare].fill_(-1)
        bag[spare:].copy_(bag_values)
        values.append(bag)
        bag_starts = buffer(bag_offsets, rows + 1)
        torch.add(bag_offsets, spare, out=bag_starts[:n])
        bag_starts[n:].fill_(capacity)  # the padding rows' bags are empty
        offsets.append(bag_starts)
    return data.Batch(padded(batch.sparse, -1), padded(batch.dense), values, offsets, padded(batch.label),
                      padded(batch.weight), padded(batch.member_id, -1),
                      None if batch.event_id is None else padded(batch.event_id, -1),
                      None if batch.position is None else padded(batch.position))


def bag_capacities(batch: data.Batch, rows: int) -> list[int]:
    """Per bag feature, the power of two >= max(its values, rows): few distinct shapes, so few graphs.

    Under torchrun the values counted are the most any rank's shard of the global batch holds
    (`Batch.shard_bag_values`, from the loader), so every rank gets the same capacities.
    """
    counts = batch.shard_bag_values or [int(v.numel()) for v in batch.bag_values]
    return [1 << (max(count, rows, 1) - 1).bit_length() for count in counts]


def _broadcast_from_rank_0(model: nn.Module) -> None:
    """Every rank starts from rank 0's parameters and buffers (tables, accumulators, normaliser)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def _average_gradients(parameters: list[nn.Parameter], world_size: int) -> None:
    """Replace every gradient by its mean over the ranks: one all-reduce of them all, flattened.

    Every rank has gradients for the same parameters (same model, same step), so the layout agrees.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    if any(g.is_sparse for g in grads):
        raise ValueError("distributed training needs dense gradients (build the model with sparse_gradients=False)")
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world_size)
    torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])


def _host_group(context: DistributedContext):
    """The process group for host-side agreements: gloo, whatever the training backend (None: the default
    group, when it is gloo already, or one process)."""
    if context.enabled and dist.get_backend() != "gloo":
        return dist.new_group(backend="gloo")
    return None


def train_model(
    model: nn.Module,
    rows: list,
    spec: dict[str, Any],
    config: TrainConfig,
    epochs: int,
    context: DistributedContext = DistributedContext(),
    fit_normalizer: bool = True,
    prior_weight: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
    holdout: list | None = None,
) -> TrainResult:
    """Train `model` (a Ranker or LogisticRegression) in place on `rows`; returns the loss history.

    With `holdout` rows and config.early_stopping, the weights of the epoch with the lowest holdout
    log loss are kept (TrainResult.best_epoch, .holdout_losses).
    """
    device = resolve_device(config.device, context)
    model.to(device)
    if fit_normalizer:
        model.normalizer.fit(data.newest_rows(rows, spec, model.config, config.normalizer_rows).dense.to(device))
    prior = {n: p.detach().clone() for n, p in model.named_parameters()} if prior_weight > 0 else None

    if config.embedding_optimizer not in ("fused", "rowwise"):
        raise ValueError(f"embedding_optimizer must be 'fused' or 'rowwise', got {config.embedding_optimizer!r}")
    # The fused optimiser steps the tables inside the lookup's backward and never reads their .grad, where the
    # pull towards the previous weights (prior) puts its gradient: with a pull, the tables take row gradients.
    fused_embeddings = (config.embedding_optimizer == "fused" and prior is None
                        and (config.embedding_weight_decay == 0 or device.type == "cuda"))
    tables = [m for m in model.modules() if isinstance(m, (HashedEmbeddings, EmbeddingBags))]
    if context.enabled:
        _broadcast_from_rank_0(model)
    exchange = dist.group.WORLD if context.enabled else None
    if fused_embeddings:
        for table in tables:  # the deep embeddings and the wide part's scalars alike
            table.enable_fused_optimizer(config.embedding_lr, config.embedding_weight_decay, exchange)
    dense_params, sparse_params = model.dense_parameters(), model.embedding_parameters()
    position = getattr(model, "position", None)
    position_ids = {id(p) for p in position.parameters()} if position is not None else set()
    groups = [{"params": [p for p in dense_params if id(p) not in position_ids]}]
    if position_ids:
        groups.append({"params": list(position.parameters()), "lr": config.position_lr, "weight_decay": 0.0})
    graphed = bool(config.cuda_graph and device.type == "cuda" and fused_embeddings and dense_params)
    # Every rank pads its shard to one shape when the tables' backward gathers (fixed-size collectives).
    padded = graphed or (context.enabled and fused_embeddings)
    shard_rows = -(-config.batch_size // context.world_size)
    host_group = _host_group(context)
    dense_opt = torch.optim.AdamW(groups, lr=config.dense_lr, weight_decay=config.dense_weight_decay,
                                  fused=device.type == "cuda", capturable=graphed) if dense_params else None
    sparse_opt = None if fused_embeddings else RowWiseAdagrad(
        sparse_params, lr=config.embedding_lr, weight_decay=config.embedding_weight_decay,
        accumulators=adagrad_accumulators(model))

    if config.compile:
        # Only the dense tower: the embedding lookups run the fused-optimiser kernels eagerly.
        model.tower.compile()
    trained = [p for p in model.parameters() if p.requires_grad]
    # No weight cache under autocast: a CUDA graph must not keep casts made at capture (and every weight is
    # cast once per step anyway).
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def train_step(sparse, dense, label, weight, position, *bags):
        """One optimisation step on one batch; returns the loss (no host synchronisation)."""
        with autocast:
            logits = model(sparse, dense, list(bags[:len(bags) // 2]), list(bags[len(bags) // 2:]), position)
        loss = weighted_bce(logits, label, weight)
        objective = loss + prior_weight * _proximal_penalty(model, prior) if prior is not None else loss
        for optimizer in (dense_opt, sparse_opt):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
        objective.backward()  # with fused embeddings, this also steps the tables
        if context.enabled:
            _average_gradients(trained, context.world_size)
        for optimizer in (dense_opt, sparse_opt):
            if optimizer is not None:
                optimizer.step()
        return loss.detach()

    graphs: dict[tuple[int, ...], CapturedStep] = {}  # one per bag-capacity shape
    stream = data.StreamConfig(
        batch_size=config.batch_size, chunk_rows=config.chunk_rows, seed=config.seed,
        # Padded batches are pinned after padding (fixed_shape copies the rows): pinning the shard first is wasted.
        rank=context.rank, world_size=context.world_size, pin_memory=device.type == "cuda" and not padded,
        batches_ahead=4 if device.type == "cuda" else 0, gather_threads=config.loader_threads,
    )

    cache = data.ChunkCache(config.cache_rows) if config.cache_rows > 0 else None
    result = TrainResult(model=model, holdout=[])
    held_out = data.load_rows(holdout, spec, model.config) if holdout and config.early_stopping else None
    best_loss, best_state = float("inf"), None
    model.train()
    started, step = time.perf_counter(), 0
    pending: list[dict[str, Any]] = []  # logged losses still on the device

    def read_back() -> None:
        """Records the pending losses as floats. Called one step later, so the read waits for that step
        only, and the device already has the next one to run (no stall per logged step)."""
        for record in pending:
            record["loss"] = float(record["loss"])
            result.history.append(record)
            if on_step is not None:
                on_step(record["step"], record["loss"])
        pending.clear()

    for epoch in range(epochs):
        model.train()
        for batch in data.stream_batches(rows, spec, model.config, stream, epoch=epoch, cache=cache):
            real_rows = len(batch)
            step_fn = train_step
            if padded:
                capacities = bag_capacities(batch, shard_rows)
                batch = fixed_shape(batch, shard_rows, capacities, pin_memory=device.type == "cuda")
            if graphed:
                if tuple(capacities) not in graphs:
                    graphs[tuple(capacities)] = CapturedStep(train_step, [dense_opt])
                step_fn = graphs[tuple(capacities)]
            batch = batch.to(device, non_blocking=True)
            position = batch.position
            if graphed and position is None:  # a graph's inputs are tensors
                position = torch.zeros_like(batch.label, dtype=torch.int64)
            loss = step_fn(batch.sparse, batch.dense, batch.label, batch.weight, position, *batch.bag_values,
                           *batch.bag_offsets)
            step += 1
            result.rows += real_rows * context.world_size
            read_back()  # the losses logged by earlier steps: this step is already queued behind them
            if step % config.log_every == 0 or step == 1:
                value = loss.detach()
                if context.enabled:
                    dist.all_reduce(value)
                    value = value / context.world_size
                pending.append({"step": step, "epoch": epoch, "rows": result.rows, "loss": value,
                                "seconds": time.perf_counter() - started})
        read_back()
        if held_out is not None:
            holdout_loss = holdout_log_loss(model, held_out)
            if context.enabled:  # rank 0's value decides everywhere, so every rank stops at the same epoch
                decided = torch.tensor([holdout_loss], dtype=torch.float64)
                dist.broadcast(decided, src=0, group=host_group)
                holdout_loss = float(decided)
            result.holdout_losses.append(holdout_loss)
            if holdout_loss < best_loss:
                best_loss, result.best_epoch = holdout_loss, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if epoch < epochs - 1 else None
            elif best_state is not None and epoch >= result.best_epoch + config.patience:
                break
    if best_state is not None and result.best_epoch < len(result.holdout_losses) - 1:
        model.load_state_dict(best_state)  # in place: the fused tables' storage stays the parameters'
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - started
    result.graphed_steps = sum(max(0, g.calls - g.warmup_steps) for g in graphs.values() if g.captured)
    for table in tables:
        table._fused = []  # the fused tables alias storage; drop them
    model.eval()
    return result


@torch.no_grad()
def predict_logits(model: nn.Module, batch: data.Batch, batch_size: int = 8192) -> torch.Tensor:
    """Uncalibrated logits for every row of a CPU batch, on the model's device, as float32 CPU."""
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    for start in range(0, len(batch), batch_size):
        part = batch.take(torch.arange(start, min(start + batch_size, len(batch)))).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs.append(model(*part.inputs).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0)


def holdout_log_loss(model: nn.Module, rows: data.Batch) -> float:
    """Weighted log loss of the uncalibrated logits on held-out rows (early stopping's criterion)."""
    logits = predict_logits(model, rows)
    return float(weighted_bce(logits, rows.label, rows.weight))


def fit_calibration(model: nn.Module, holdout: list, spec: dict[str, Any]) -> dict[str, float]:
    """Fit the isotonic layer on held-out rows; returns how many rows and knots it used."""
    rows = data.load_rows(holdout, spec, model.config)
    logits = predict_logits(model, rows)
    model.calibration.fit(logits, rows.label, rows.weight)
    knots = int(torch.unique(model.calibration.knots).numel())
    return {"calibration_rows": len(rows), "calibration_knots": knots}


def train_ranker(
    training_set: Path,
    days: list[date],
    model_config: RankerConfig | None = None,
    config: TrainConfig = TrainConfig(),
    warm_start: nn.Module | None = None,
    model_factory: Callable[[RankerConfig, bool], nn.Module] = Ranker,
    context: DistributedContext = DistributedContext(),
    on_step: Callable[[int, float], None] | None = None,
    holdout_days: list[date] = (),
) -> TrainResult:
    """Full retrain on `days` (warm_start None) or incremental training of `warm_start` on them.

    A `holdout_fraction` of the newest `calibration_days` days is held out and the calibration is fitted on it.
    `holdout_days`: earlier days whose held-out rows (the same draw) join the holdout, never trained on.
    For a warm start, the days the serving model was trained on: when it held out the same fraction of
    every day (calibration_days 0), neither model has seen those rows, and the calibration of one
    day's increment is fitted on all of them instead of one day's few (2,000 rows on the demo data).
    """
    spec = data.read_spec(training_set)
    files = data.day_files(training_set, days)
    train_rows, holdout = data.split_holdout(files, config.holdout_fraction, config.calibration_days or len(files))
    if holdout_days:
        earlier = data.day_files(training_set, list(holdout_days))
        holdout = data.split_holdout(earlier, config.holdout_fraction, len(earlier))[1] + holdout
    torch.manual_seed(config.seed)
    if warm_start is not None:
        model = warm_start
        if context.enabled:
            _use_dense_embedding_gradients(model)
        epochs, fit_normalizer, prior_weight = config.warm_start_epochs, False, config.warm_start_l2
        for accumulator in adagrad_accumulators(model).values():
            accumulator.mul_(config.warm_start_accumulator_scale)
        scale = config.warm_start_dense_lr_scale
        config = replace(config, dense_lr=config.dense_lr * scale, position_lr=config.position_lr * scale)
    else:
        if model_config is None:
            model_config = RankerConfig.from_spec(spec)
        model = model_factory(model_config, not context.enabled)
        epochs, fit_normalizer, prior_weight = config.epochs, True, 0.0
    result = train_model(model, train_rows, spec, config, epochs, context, fit_normalizer, prior_weight, on_step,
                         holdout=holdout)
    result.holdout = holdout
    fit_calibration(model, holdout, spec)
    return result


def _use_dense_embedding_gradients(model: nn.Module) -> None:
    model.embeddings.sparse = False
    for table in model.bags.tables:
        table.sparse = False


def _days(start: str, end: str) -> list[date]:
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry for plain python and torchrun (same flags)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--training-set", type=Path, required=True, help="features/training_set folder")
    parser.add_argument("--first-day", required=True, help="first training day YYYY-MM-DD (not --start: torchrun owns --start-method)")
    parser.add_argument("--last-day", required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder (written by rank 0)")
    parser.add_argument("--warm-start", type=Path, default=None, help="checkpoint to continue from")
    parser.add_argument("--backend", default=None, help="process-group backend (default nccl on GPU, gloo on CPU)")
    parser.add_argument("--model-config", type=str, default="{}", help="JSON of RankerConfig architecture fields")
    for name, value in asdict(TrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value) if not isinstance(value, bool) else
                            lambda v: v.lower() in ("1", "true", "yes"), default=value)
    args = parser.parse_args(argv)
    context = distributed_from_environment(args.backend)
    train_config = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig())})
    warm = None
    if args.warm_start is not None:
        from training.ranker.checkpoint import load_checkpoint

        warm = load_checkpoint(args.warm_start, sparse_gradients=not context.enabled)
    spec = data.read_spec(args.training_set)
    model_config = RankerConfig.from_spec(spec, **json.loads(args.model_config))
    result = train_ranker(args.training_set, _days(args.first_day, args.last_day), model_config, train_config, warm,
                          context=context)
    if context.is_main:
        from training.ranker.checkpoint import save_checkpoint

        save_checkpoint(result.model, args.out, {"days": [args.first_day, args.last_day], "world_size": context.world_size,
                                                  "seconds": result.seconds, "rows": result.rows})
        (args.out / "history.json").write_text(json.dumps(
            {"history": result.history, "seconds": result.seconds, "rows": result.rows,
             "samples_per_second": result.samples_per_second, "world_size": context.world_size,
             "graphed_steps": result.graphed_steps}, indent=1))
        print(f"trained on {result.rows} samples (training rows x epochs) in {result.seconds:.1f}s "
              f"({result.samples_per_second:,.0f} samples/s, {context.world_size} process(es)); "
              f"final loss {result.history[-1]['loss']:.4f}")
    if context.enabled:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
