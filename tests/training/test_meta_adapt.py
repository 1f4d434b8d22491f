"""Per-member adaptation: vmap over members equals one member at a time, and bad inputs stay finite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import vmap

from training.meta.adapt import InnerLoopConfig, adapt_members, make_adapt_one, meta_embeddings, support_loss
from training.meta.subnetwork import JobInputs, SubNetwork, SubNetworkConfig, flatten_params

TOLERANCE = 1e-10  # float64: vmap batches the same arithmetic, so only summation order can differ


def _batch(members: int, rows: int, seed: int = 0, dense: int = 2):
    generator = torch.Generator().manual_seed(seed)
    inputs = JobInputs(torch.randint(0, 64, (members, rows, 3), generator=generator),
                       torch.randint(0, 64, (members, rows, 1, 5), generator=generator),
                       torch.randn(members, rows, dense, generator=generator, dtype=torch.float64))
    labels = torch.randint(0, 2, (members, rows), generator=generator).double()
    # Variable-length support sets: member m has m % rows real rows (member 0: none -> cold start).
    lengths = torch.arange(members) % (rows + 1)
    weights = (torch.arange(rows)[None, :] < lengths[:, None]).double()
    return inputs, labels, weights


def _net(dense: int = 2, adapted_layers: int = 1) -> SubNetwork:
    torch.manual_seed(1)
    config = SubNetworkConfig(hash_buckets=64, dense_columns=tuple(f"j_d{i}" for i in range(dense)),
                              adapted_layers=adapted_layers)
    return SubNetwork(config).double()


@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("adapted_layers", [1, 2])
def test_vmap_adaptation_equals_one_member_at_a_time(first_order: bool, adapted_layers: int) -> None:
    net = _net(adapted_layers=adapted_layers)
    inputs, labels, weights = _batch(members=9, rows=6)
    hidden = net.body(inputs)
    config = InnerLoopConfig(steps=4, learning_rate=0.7, grad_clip=2.0)
    batched = adapt_members(net, hidden, labels, weights, config, first_order)
    adapt_one = make_adapt_one(net, config, first_order)
    worst = 0.0
    for member in range(9):
        alone = adapt_one(net.head_params(), hidden[member], labels[member], weights[member])
        worst = max(worst, max(float((batched[k][member] - alone[k]).detach().abs().max()) for k in alone))
    print(f"max |vmap - loop| over adapted parameters (first_order={first_order}): {worst:.3e}")
    assert worst < TOLERANCE
    # The member with no support rows keeps the meta-initialisation exactly.
    assert torch.equal(flatten_params(batched)[0], flatten_params(net.head_params()).detach())


def test_second_order_meta_gradient_matches_loop() -> None:
    """d(sum of query losses)/d(meta-parameters) is the same batched or member by member."""
    net = _net()
    inputs, labels, weights = _batch(members=5, rows=4, seed=3)
    config = InnerLoopConfig(steps=3)

    def meta_grads(batched: bool) -> torch.Tensor:
        net.zero_grad()
        hidden = net.body(inputs)
        if batched:
            params = adapt_members(net, hidden, labels, weights, config, first_order=False)
            loss = vmap(support_loss)(vmap(net.head_logits)(params, hidden), labels, torch.ones_like(labels)).sum()
        else:
            adapt_one = make_adapt_one(net, config, first_order=False)
            loss = sum(support_loss(net.head_logits(adapt_one(net.head_params(), hidden[m], labels[m], weights[m]),
                                                    hidden[m]), labels[m], torch.ones_like(labels[m]))
                       for m in range(5))
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])

    difference = float((meta_grads(True) - meta_grads(False)).abs().max())
    assert difference < TOLERANCE


def _embed(net, labels, weights, dense):
    inputs = JobInputs(torch.ones(labels.shape + (3,), dtype=torch.long),
                       torch.ones(labels.shape + (1, 2), dtype=torch.long), dense)
    return meta_embeddings(net, net.body(inputs), labels, weights, InnerLoopConfig(steps=50, learning_rate=5.0))


def test_bad_members_get_finite_embeddings() -> None:
    net = _net().float()
    rows = 8
    labels = torch.zeros(5, rows)
    weights = torch.zeros(5, rows)
    dense = torch.randn(5, rows, 2)
    weights[0, 0], labels[0, 0] = 1.0, 1.0                     # one interaction
    weights[1], labels[1] = 1.0, 1.0                            # only positives, 50 large steps
    weights[2] = 1.0                                            # NaN and inf dense features
    dense[2, :, 0] = float("nan")
    dense[2, :, 1] = float("inf")
    weights[3] = 1.0                                            # NaN labels and weights
    labels[3, :4] = float("nan")
    weights[3, 4:] = float("nan")
    weights[4, 0] = 1e30                                        # absurd weight
    embeddings, fallbacks = _embed(net, labels, weights, dense)
    assert torch.isfinite(embeddings).all()
    assert fallbacks == 0
    # Gradient clipping bounds the move: k steps of size lr * clip at most.
    init = flatten_params(net.head_params()).detach()
    moved = (embeddings - init).norm(dim=1)
    assert float(moved.max()) <= 50 * 5.0 * 5.0 + 1e-3
    # Only positives still personalises (the bias goes up), it does not stay at the init.
    assert float(moved[1]) > 0.1


def test_nan_dense_input_is_treated_as_the_column_mean() -> None:
    net = _net().float()
    net.dense_mean.copy_(torch.tensor([3.0, -1.0]))
    with_nan = JobInputs(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 1, 2, dtype=torch.long),
                         torch.tensor([[float("nan"), -1.0]]))
    at_mean = JobInputs(with_nan.categorical, with_nan.multi_valued, torch.tensor([[3.0, -1.0]]))
    assert torch.allclose(net.body(with_nan), net.body(at_mean))


def test_history_reports_the_mean_of_the_first_and_last_steps() -> None:
    from training.meta.maml import MetaTrainHistory

    history = MetaTrainHistory(query_loss=[0.9, 0.1, 0.5, 0.2, 0.3, 0.4])
    assert history.mean_query_loss(2) == pytest.approx((0.5, 0.35))
    assert history.mean_query_loss(20) == pytest.approx((0.4, 0.4))  # fewer steps than asked: all of them
    assert np.isnan(MetaTrainHistory().mean_query_loss(5)[0])


@pytest.mark.parametrize("first_order", [True, False])
def test_sets_embedded_on_their_present_rows_adapt_and_score_as_the_whole_padded_sets(first_order: bool) -> None:
    """embed_set runs the body on present rows only; MAML's query logits and meta-gradient are those of the
    body run on every padded row (the padding weighs 0, so its hidden vectors must not matter)."""
    from training.meta.maml import adapted_query_logits
    from training.meta.tasks import PAD, embed_set

    net = _net(adapted_layers=2)
    events, _, _ = _batch(members=1, rows=40, seed=3)
    inputs = JobInputs(events.categorical[0], events.multi_valued[0], events.dense[0])
    generator = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 2, (40,), generator=generator).double()
    weights = torch.rand(40, generator=generator, dtype=torch.float64) + 0.5
    support = torch.randint(0, 40, (7, 9), generator=generator)
    support[torch.rand(7, 9, generator=generator) < 0.7] = PAD
    support[0] = PAD  # a member with no support rows
    query = torch.randint(0, 40, (7, 5), generator=generator)
    query[:, 3:] = PAD

    calls = []
    body = net.body
    net.body = lambda x: calls.append(x.categorical.shape[:-1]) or body(x)
    hidden, set_labels, set_weights = embed_set(net, support, inputs, labels, weights)
    present = support != PAD
    assert calls == [(int(present.sum()),)]
    assert torch.equal(hidden[~present], torch.zeros_like(hidden[~present]))
    assert torch.allclose(hidden[present], body(inputs.index(support[present])), rtol=0, atol=1e-12)
    assert torch.equal(set_weights[~present], torch.zeros_like(set_weights[~present]))

    def padded_everywhere(rows, inputs, labels, weights):  # the body on every row, padding as row 0
        safe = torch.where(rows != PAD, rows, torch.zeros_like(rows))
        return body(inputs.index(safe)), labels[safe], torch.where(rows != PAD, weights[safe], torch.zeros(()).double())

    def query_loss_and_grads(embed):
        import training.meta.maml as maml
        original, maml.embed_set = maml.embed_set, lambda n, rows, i, l, w: embed(rows, i, l, w)
        try:
            logits, y, w = adapted_query_logits(net, inputs, labels, weights, support, query, InnerLoopConfig(),
                                                first_order)
        finally:
            maml.embed_set = original
        loss = vmap(support_loss)(logits, y, w).mean()
        return logits, torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)

    ours = query_loss_and_grads(lambda rows, i, l, w: embed_set(net, rows, i, l, w))
    whole = query_loss_and_grads(padded_everywhere)
    scored = query != PAD  # a padding row's logit is never used (weight 0)
    assert torch.allclose(ours[0][scored], whole[0][scored], rtol=1e-10, atol=1e-12)
    for a, b in zip(ours[1], whole[1]):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-9, atol=1e-12))
