"""Meta-training of the sub-network with MAML, vectorised over members with torch.func.

MAML (Finn, Abbeel & Levine 2017, Algorithm 1) learns the initialisation that adapts best in k steps:

    min_{theta}  E_m [ L_{Q_m}( phi_m(theta) ) ],   phi_m(theta) = InnerLoop_k(phi_0, S_m; body)    (eq. 1)

theta = (body, phi_0) are the meta-parameters: the shared body and the head's initialisation. Tasks are
members, S_m their earlier interactions and Q_m their later ones (training/meta/tasks.py). Each outer step
takes a batch of members, adapts all of them at once (`vmap` over the member axis of padded [B, N] sets,
training/meta/adapt.py), scores their query sets with their own adapted heads (`vmap` of `functional_call`),
and takes an Adam step on the mean query loss.

Second-order MAML back-propagates through the k inner SGD steps (Hessian-vector products of the inner loss).
First-order MAML (FOMAML, Finn et al. sec. 5.2) treats the inner gradients as constants, so
d phi_m / d phi_0 = I and the body only learns through the query path. **Second-order is the default**,
because it measurably learns an initialisation that adapts better, at a price that does not matter for a
weekly job. Measured (same data, seeds and 300 outer steps; tests/training/test_meta_personalisation.py on
the synthetic marketplace, benchmarks/results/meta-*.md for time):
  time per outer step   H100, 4096 members: first 29.2 ms, second 41.3 ms (1.4x); 256 members: 24.0 vs 38.6 ms;
                        1 CPU thread (shared machine), 256 members: first 54 ms, second 76 ms
                        (before `embed_set` ran the body on present rows only; since then the demo's
                        day-7 meta-training, 256 members, 2 CPU threads: second 27 ms a step)
  adapted member AUC    warm (>10 events): first 0.558, second 0.585 (second-order meta-init unadapted: 0.538);
  on the next day       few (1-10 events): first 0.606, second 0.610; 5-shot: first 0.563, second 0.553
The clearest difference is on warm members, the bulk of the traffic; on the 5-shot protocol first-order
was ahead by 0.01 in this run.
First-order stays available (MetaTrainConfig(first_order=True)) for sub-networks where the double backward
gets expensive (many adapted layers, large k).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import vmap

from training.meta.adapt import InnerLoopConfig, adapt_members, clean_targets, support_loss
from training.meta.subnetwork import JobInputs, SubNetwork
from training.meta.tasks import Tasks, embed_set


@dataclass(frozen=True)
class MetaTrainConfig:
    """The outer loop."""

    outer_steps: int = 300
    members_per_batch: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    # Second-order by default: see the module docstring for the measurement behind it.
    first_order: bool = False
    seed: int = 0


@dataclass
class MetaTrainHistory:
    """What meta-training did: per-step query losses and the wall time of each outer step."""

    query_loss: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def seconds_per_step(self) -> float:
        # The first step includes one-off allocation and autograd graph warm-up; report the steady state.
        steady = self.step_seconds[1:] or self.step_seconds
        return float(np.median(steady)) if steady else float("nan")

    def mean_query_loss(self, steps: int = 20) -> tuple[float, float]:
        """Mean query loss over the first and over the last `steps` outer steps.

        One step's loss is one random batch of members, so a single first or last value says little about the
        trend (the demo's day-7 warm start read 0.287 -> 0.318 from two single batches).
        """
        first, last = self.query_loss[:steps], self.query_loss[-steps:]
        return (float(np.mean(first)) if first else float("nan"), float(np.mean(last)) if last else float("nan"))


def adapted_query_logits(
    net: SubNetwork,
    inputs: JobInputs,
    labels: torch.Tensor,
    weights: torch.Tensor,
    support: torch.Tensor,
    query: torch.Tensor,
    inner: InnerLoopConfig,
    first_order: bool,
    adapt: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adapt on `support` rows [B, Ns], score `query` rows [B, Nq]: (logits, labels, weights), each [B, Nq]."""
    hidden_query, query_labels, query_weights = embed_set(net, query, inputs, labels, weights)
    if adapt:
        hidden_support, support_labels, support_weights = embed_set(net, support, inputs, labels, weights)
        support_labels, support_weights = clean_targets(support_labels, support_weights)
        params = adapt_members(net, hidden_support, support_labels, support_weights, inner, first_order)
        logits = vmap(net.head_logits)(params, hidden_query)
    else:
        logits = net.head_logits(net.head_params(), hidden_query)
    return logits, query_labels, query_weights


def meta_train(
    net: SubNetwork,
    inputs: JobInputs,
    labels: torch.Tensor,
    weights: torch.Tensor,
    tasks: Tasks,
    config: MetaTrainConfig = MetaTrainConfig(),
    inner: InnerLoopConfig = InnerLoopConfig(),
    on_step=None,
) -> MetaTrainHistory:
    """Run `config.outer_steps` MAML outer steps over `tasks` (members), updating `net` in place.

    `inputs`, `labels`, `weights` hold every event the tasks index, on the device `net` lives on.
    Warm start = pass a `net` loaded from the previous meta-initialisation.
    """
    if len(tasks) == 0:
        raise ValueError("meta_train: no tasks (no member has a query event in the training window)")
    device = next(net.parameters()).device
    labels, weights = clean_targets(labels, weights)
    support_all = torch.from_numpy(tasks.support).to(device)
    query_all = torch.from_numpy(tasks.query).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    batch_size = min(config.members_per_batch, len(tasks))
    history = MetaTrainHistory()
    net.train()
    for step in range(config.outer_steps):
        started = time.perf_counter()
        batch = torch.from_numpy(rng.choice(len(tasks), size=batch_size, replace=False)).to(device)
        logits, query_labels, query_weights = adapted_query_logits(
            net, inputs, labels, weights, support_all[batch], query_all[batch], inner, config.first_order)
        loss = vmap(support_loss)(logits, query_labels, query_weights).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        history.step_seconds.append(time.perf_counter() - started)
        history.query_loss.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, history.query_loss[-1])
    net.eval()
    return history
