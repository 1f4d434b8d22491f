"""kernels.alignment: zero-padded linear layers equal the unpadded ones, values and gradients,
and the ranker's tower (which pads x_0 to a multiple of 8) computes the same logits."""

import pytest
import torch
from torch.nn import functional as F

from kernels.alignment import aligned_width, pad_columns, padded_linear


def test_aligned_width_rounds_up_to_the_multiple():
    assert [aligned_width(w) for w in (1, 8, 9, 1677)] == [8, 8, 16, 1680]


def test_padded_linear_is_the_linear_layer_with_zero_padding_and_same_gradients():
    torch.manual_seed(0)
    x = torch.randn(11, 13, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 13, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    expected = F.linear(x, weight, bias)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), grad)

    x_padded = pad_columns(x, aligned_width(13))
    out = padded_linear(x_padded, weight, bias, out_width=8)
    assert out.shape == (11, 8)
    assert torch.equal(out[:, 5:], torch.zeros(11, 3, dtype=torch.float64))
    torch.testing.assert_close(out[:, :5], expected)
    grads = torch.autograd.grad(out, (x, weight, bias), F.pad(grad, (0, 3)))
    for g, g_expected in zip(grads, expected_grads):
        assert g.shape == g_expected.shape
        torch.testing.assert_close(g, g_expected)


def test_padding_narrower_than_the_input_is_refused():
    with pytest.raises(ValueError, match="more than the target width"):
        pad_columns(torch.zeros(2, 9), 8)
    with pytest.raises(ValueError, match="weight is 4 x 9"):
        padded_linear(torch.zeros(2, 8), torch.zeros(4, 9))


@pytest.mark.parametrize("attention", [False, True])
def test_ranker_tower_logits_and_gradients_do_not_depend_on_the_padding(attention):
    from training.ranker.model import RankerConfig, Tower

    torch.manual_seed(0)
    config = RankerConfig(dense_features=("a", "b", "c"), embedding_dim=5, cross_layers=2, cross_rank=3,
                          cross_attention=attention, mlp_widths=(6, 4))
    assert config.input_dim % 8 != 0  # 2 x 5 + 3 = 13: the tower must pad
    tower = Tower(config)
    with torch.no_grad():
        for layer in tower.cross.layers:
            layer.bias.normal_()
    x0 = torch.randn(9, config.input_dim)
    unpadded = tower.head(tower.mlp(tower.cross(x0))).squeeze(-1)  # layers at their true width
    unpadded_grads = torch.autograd.grad(unpadded.sum(), list(tower.parameters()))
    padded = tower(x0)
    padded_grads = torch.autograd.grad(padded.sum(), list(tower.parameters()))
    torch.testing.assert_close(padded, unpadded)
    for g, g_expected in zip(padded_grads, unpadded_grads):
        torch.testing.assert_close(g, g_expected)
