"""Profile a DCNv2-style ranker training step on one GPU, and the same step on rankflow's kernels.

Shape (the ranker issue's baseline): 26 sparse features x 100k rows x dim 64, 13 dense features,
3 low-rank cross layers (rank 256), MLP 1024-1024-512-1, batch 8192, bf16 autocast, fused Adam.
The model is self-contained here (training/ranker may change under us). Variants:

- baseline eager / baseline compiled: nn.EmbeddingBag with dense gradients, fused Adam over every
  parameter including the 166M embedding weights (what a plain PyTorch ranker does);
- kernels (triton): FusedEmbeddingBag (row-wise Adagrad fused into backward), cross_tail and
  bce_with_logits Triton kernels; fused Adam over the dense parameters only;
- kernels (reference backend): the same model and optimiser semantics through the PyTorch
  references (kernels.dispatch "reference"): its loss curve must match the Triton one.

Writes the top-15 CUDA ops of each profiled step, throughput, peak memory and 200-step loss curves
(markdown + PNG) under --out.

    PYTHONPATH=. python3 benchmarks/profile_step.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch import nn

from benchmarks.reference_dcn import ReferenceShape
from kernels import dispatch
from kernels.bce import bce_with_logits
from kernels.cross import cross_tail
from kernels.embedding import FusedEmbeddingBag


@dataclass(frozen=True)
class Shape(ReferenceShape):
    """The baseline shape of benchmarks/reference_dcn.py plus the batch size."""

    batch: int = 8192


class LowRankCross(nn.Module):
    """x_{l+1} = x0 * (V (U x_l) + b) + x_l (DCNv2 eq. 1 with W = V U)."""

    def __init__(self, width: int, rank: int, fused: bool) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        self.bias = nn.Parameter(torch.zeros(width))
        self.fused = fused

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        projected = self.up(self.down(x))
        if self.fused:
            return cross_tail(x0, projected, self.bias, x)
        return x0 * (projected + self.bias) + x


class Ranker(nn.Module):
    def __init__(self, shape: Shape, fused: bool) -> None:
        super().__init__()
        self.shape, self.fused = shape, fused
        num_rows = shape.sparse_features * shape.rows_per_table
        if fused:
            self.embeddings = FusedEmbeddingBag(num_rows, shape.embedding_dim, mode="sum", lr=0.01)
        else:
            self.embeddings = nn.EmbeddingBag(num_rows, shape.embedding_dim, mode="sum")
            bound = (1.0 / num_rows) ** 0.5
            nn.init.uniform_(self.embeddings.weight, -bound, bound)
        self.register_buffer("table_offsets", torch.arange(shape.sparse_features) * shape.rows_per_table)
        width = shape.sparse_features * shape.embedding_dim + shape.dense_features
        self.cross = nn.ModuleList(LowRankCross(width, shape.cross_rank, fused) for _ in range(shape.cross_layers))
        layers, previous = [], width
        for hidden in shape.mlp:
            layers += [nn.Linear(previous, hidden), nn.ReLU()]
            previous = hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(previous, 1))

    def forward(self, sparse_ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        batch = sparse_ids.shape[0]
        # All tables in one: each feature's ids shifted by its table's first row (one bag per feature).
        indices = (sparse_ids + self.table_offsets).reshape(-1)
        offsets = torch.arange(0, indices.numel() + 1, device=indices.device)
        pooled = self.embeddings(indices, offsets) if self.fused else self.embeddings(indices, offsets[:-1])
        x0 = torch.cat([pooled.view(batch, -1), dense], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.mlp(x).squeeze(1)


def loss_fn(model: Ranker, batch) -> torch.Tensor:
    sparse_ids, dense, labels = batch
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(sparse_ids, dense)
    if model.fused:
        return bce_with_logits(logits, labels)
    return F.binary_cross_entropy_with_logits(logits.float(), labels)


def make_batches(shape: Shape, count: int, seed: int = 0):
    """Synthetic clicks with learnable signal: a hidden per-row effect plus a dense linear term."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    row_effect = torch.randn(shape.sparse_features, shape.rows_per_table, device="cuda", generator=generator) * 0.5
    dense_weight = torch.randn(shape.dense_features, device="cuda", generator=generator) * 0.3
    batches = []
    for _ in range(count):
        u = torch.rand(shape.batch, shape.sparse_features, device="cuda", generator=generator)
        ids = (u ** 3 * shape.rows_per_table).long()  # skewed: hot ids repeat inside a batch
        dense = torch.randn(shape.batch, shape.dense_features, device="cuda", generator=generator)
        logit = row_effect.gather(1, ids.T).T.sum(1) / shape.sparse_features ** 0.5 + dense @ dense_weight
        labels = torch.bernoulli(torch.sigmoid(logit), generator=generator)
        batches.append((ids, dense, labels))
    return batches


def build(shape: Shape, variant: str):
    torch.manual_seed(0)
    fused = variant.startswith("kernels")
    model = Ranker(shape, fused).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    step_loss = torch.compile(loss_fn) if variant == "baseline compiled" else loss_fn

    def step(batch) -> torch.Tensor:
        loss = step_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def run_variant(shape: Shape, variant: str, batches, steps: int, timed: int, profile_dir: Path | None):
    backend = "reference" if variant.endswith("(reference backend)") else "auto"
    with dispatch.backend(backend):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = build(shape, variant)
        losses = [step(batches[i % len(batches)]) for i in range(steps)]  # the loss curve (also the warm-up)
        losses = torch.stack(losses).float().cpu().tolist()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for i in range(timed):
            step(batches[i % len(batches)])
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / timed
        table = None
        if profile_dir is not None:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for i in range(5):
                    step(batches[i % len(batches)])
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60)
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    return {"variant": variant, "ms_per_step": ms, "samples_per_s": shape.batch / ms * 1e3,
            "peak_gib": peak_gib, "losses": losses, "profile": table}


def machine() -> str:
    return (f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--steps", type=int, default=200, help="steps for the loss curve")
    parser.add_argument("--timed", type=int, default=50, help="steps timed after the curve")
    parser.add_argument("--variants", default="baseline eager,baseline compiled,kernels (triton),"
                                              "kernels (reference backend)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shape = Shape()
    batches = make_batches(shape, count=args.steps)  # fresh data every curve step: no memorising
    results = []
    for variant in args.variants.split(","):
        profiled = variant in ("baseline eager", "kernels (triton)")
        result = run_variant(shape, variant, batches, args.steps, args.timed, args.out if profiled else None)
        print(f"{variant}: {result['ms_per_step']:.3f} ms/step, {result['samples_per_s'] / 1e6:.3f} M samples/s, "
              f"peak {result['peak_gib']:.2f} GiB, loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}",
              flush=True)
        results.append(result)
    gpu = torch.cuda.get_device_name().replace(" ", "-").lower()
    lines = [f"# Training step profile ({machine()})", "", f"Shape: {shape}", "",
             "| variant | ms / step | M samples/s | peak GiB | loss step 1 | loss step 200 (mean of last 20) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        tail = sum(r["losses"][-20:]) / len(r["losses"][-20:])
        lines.append(f"| {r['variant']} | {r['ms_per_step']:.3f} | {r['samples_per_s'] / 1e6:.3f} | "
                     f"{r['peak_gib']:.2f} | {r['losses'][0]:.4f} | {tail:.4f} |")
    by_name = {r["variant"]: r for r in results}
    if "kernels (triton)" in by_name and "kernels (reference backend)" in by_name:
        a, b = by_name["kernels (triton)"]["losses"], by_name["kernels (reference backend)"]["losses"]
        gap = max(abs(x - y) for x, y in zip(a, b))
        lines += ["", f"Largest per-step loss difference, triton vs reference backend, over {len(a)} steps: {gap:.2e}"]
    for r in results:
        if r["profile"]:
            lines += ["", f"## Top 15 ops by CUDA time: {r['variant']} (5 steps)", "", "```", r["profile"], "```"]
    text = "\n".join(lines) + "\n"
    (args.out / f"kernels-step-{gpu}.md").write_text(text)
    (args.out / f"kernels-step-{gpu}.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "profile"} for r in results]))
    print(text)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot(r["losses"], label=f"{r['variant']} ({r['samples_per_s'] / 1e6:.2f} M/s)", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (BCE)")
    ax.set_title(machine(), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"kernels-step-{gpu}.png", dpi=110)


if __name__ == "__main__":
    main()
