"""The LiMAML meta block: a small MLP over job-side inputs whose last layer(s) are personalised per member.

LiMAML (Wang et al., KDD 2024, arXiv 2403.00803) splits a recommender into a *meta block*, meta-learned with
MAML and adapted per member on the member's recent interactions, and a *global block* shared by everyone.
Here the meta block scores a job for one member:

    h(x)       = body(x)         = MLP_body([E_industry(x), E_seniority(x), E_region(x), mean_s E_skill(s), d(x)])
    f_phi(x)   = head_phi(h(x))  (the last `adapted_layers` Linear layers; phi are the personalised parameters)

`body` is shared by every member and only changes in meta-training; `phi` starts at the meta-initialisation
phi_0 and is adapted per member by k SGD steps (training/meta/adapt.py). The adapted phi_m, flattened, is the
member's meta embedding: a fixed-size vector the ranker reads like any other feature, so serving never runs
the inner loop. Its length is `SubNetworkConfig.embedding_length` (33 floats by default: 32 weights + 1 bias).

Categorical job attributes arrive as hashed bucket codes (0 = missing), multi-valued ones as padded code bags
(0 = padding), dense features as floats: see training/meta/tasks.py for how events become these tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

# Dense inputs are standardised then clipped: a single wild value (salary in raw units, a NaN that slipped
# through) must not dominate a member's few-shot gradient.
DENSE_CLIP = 5.0


@dataclass(frozen=True)
class SubNetworkConfig:
    """Shape of the meta block. Column names are the job-side columns of the training set (spec.json)."""

    categorical_columns: tuple[str, ...] = ("j_industry", "j_seniority", "j_region")
    multi_valued_columns: tuple[str, ...] = ("j_skills",)
    dense_columns: tuple[str, ...] = ()
    hash_buckets: int = 4096
    embedding_dim: int = 8
    hidden_dims: tuple[int, ...] = (64, 32)
    # How many of the final Linear layers are personalised (1 = the output layer: hidden_dims[-1] + 1 floats).
    adapted_layers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.adapted_layers <= len(self.hidden_dims) + 1:
            raise ValueError(
                f"adapted_layers={self.adapted_layers} must be between 1 and {len(self.hidden_dims) + 1} "
                f"(the number of Linear layers for hidden_dims={self.hidden_dims})"
            )
        if self.hash_buckets < 2:
            raise ValueError(f"hash_buckets={self.hash_buckets}: need at least 2 (bucket 0 means missing)")

    @property
    def input_dim(self) -> int:
        embedded = (len(self.categorical_columns) + len(self.multi_valued_columns)) * self.embedding_dim
        return embedded + len(self.dense_columns)

    @property
    def layer_dims(self) -> list[tuple[int, int]]:
        dims = [self.input_dim, *self.hidden_dims, 1]
        return list(zip(dims[:-1], dims[1:]))

    @property
    def embedding_length(self) -> int:
        """Number of floats in a meta embedding: the parameters of the adapted layers."""
        return sum(fan_in * fan_out + fan_out for fan_in, fan_out in self.layer_dims[-self.adapted_layers:])


@dataclass
class JobInputs:
    """Job-side model inputs for any leading shape (events, or members x events).

    categorical: long [..., C] hashed codes, 0 = missing
    multi_valued: long [..., K, L] hashed codes per bag, 0 = padding
    dense: float [..., D] raw values (NaN allowed; the body cleans them)
    """

    categorical: torch.Tensor
    multi_valued: torch.Tensor
    dense: torch.Tensor

    def index(self, rows: torch.Tensor) -> "JobInputs":
        """Gather rows of the first axis (rows may have any shape; the result has rows.shape + trailing)."""
        return JobInputs(self.categorical[rows], self.multi_valued[rows], self.dense[rows])

    def to(self, device: torch.device | str) -> "JobInputs":
        return JobInputs(self.categorical.to(device), self.multi_valued.to(device), self.dense.to(device))


class SubNetwork(nn.Module):
    """The meta block: `body` (shared) then `head` (personalised; its parameters are the meta embedding)."""

    def __init__(self, config: SubNetworkConfig = SubNetworkConfig()) -> None:
        super().__init__()
        self.config = config
        self.categorical_embeddings = nn.ModuleList(
            nn.Embedding(config.hash_buckets, config.embedding_dim, padding_idx=0)
            for _ in config.categorical_columns
        )
        self.bag_embeddings = nn.ModuleList(
            nn.Embedding(config.hash_buckets, config.embedding_dim, padding_idx=0)
            for _ in config.multi_valued_columns
        )
        # Standardisation of the dense inputs, fitted on meta-training data (fit_dense_scaling) and saved with
        # the state so that the daily refresh sees inputs on the scale the meta-init was learned on.
        n_dense = len(config.dense_columns)
        self.register_buffer("dense_mean", torch.zeros(n_dense))
        self.register_buffer("dense_scale", torch.ones(n_dense))
        linears = [nn.Linear(fan_in, fan_out) for fan_in, fan_out in config.layer_dims]
        split = len(linears) - config.adapted_layers
        self.body_layers = nn.ModuleList(linears[:split])
        self.head = _relu_stack(linears[split:])

    # ---- body: x -> h (shared) -------------------------------------------------------------------------
    def body(self, inputs: JobInputs) -> torch.Tensor:
        """h = body(x): embeddings + dense inputs through the shared layers (ReLU after each)."""
        parts = [table(inputs.categorical[..., i]) for i, table in enumerate(self.categorical_embeddings)]
        for i, table in enumerate(self.bag_embeddings):
            codes = inputs.multi_valued[..., i, :]
            present = (codes > 0).to(table.weight.dtype).unsqueeze(-1)
            # Mean over the bag's present codes; an empty bag embeds to zero, not NaN.
            parts.append((table(codes) * present).sum(-2) / present.sum(-2).clamp_min(1.0))
        if self.config.dense_columns:
            dense = torch.nan_to_num(inputs.dense.to(self.dense_mean.dtype), nan=0.0, posinf=0.0, neginf=0.0)
            dense = ((dense - self.dense_mean) / self.dense_scale).clamp(-DENSE_CLIP, DENSE_CLIP)
            # A NaN input standardises to -mean/scale; mask it to 0 (the column mean) instead.
            dense = torch.where(torch.isfinite(inputs.dense), dense, torch.zeros_like(dense))
            parts.append(dense)
        hidden = torch.cat(parts, dim=-1)
        for layer in self.body_layers:
            hidden = torch.relu(layer(hidden))
        return hidden

    # ---- head: h -> logit (personalised) ---------------------------------------------------------------
    def head_params(self) -> dict[str, torch.Tensor]:
        """The meta-initialisation phi_0 of the personalised layers (live parameters, in embedding order)."""
        return dict(self.head.named_parameters())

    def head_logits(self, params: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """f_phi(h) for personalised parameters `params` (one member's, when called under vmap)."""
        return functional_call(self.head, params, (hidden,)).squeeze(-1)

    def forward(self, inputs: JobInputs) -> torch.Tensor:
        """Logits of the unadapted meta-initialisation."""
        return self.head_logits(self.head_params(), self.body(inputs))

    @torch.no_grad()
    def fit_dense_scaling(self, dense: torch.Tensor) -> None:
        """Set the dense standardisation from a sample of training rows (finite values only)."""
        if not self.config.dense_columns:
            return
        values = dense.to(self.dense_mean.dtype)
        finite = torch.isfinite(values)
        count = finite.sum(0).clamp_min(1)
        clean = torch.where(finite, values, torch.zeros_like(values))
        mean = clean.sum(0) / count
        var = (torch.where(finite, values - mean, torch.zeros_like(values)) ** 2).sum(0) / count
        self.dense_mean.copy_(mean)
        self.dense_scale.copy_(var.sqrt().clamp_min(1e-6))


def _relu_stack(linears: list[nn.Linear]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for i, layer in enumerate(linears):
        if i:
            modules.append(nn.ReLU())
        modules.append(layer)
    return nn.Sequential(*modules)


def flatten_params(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate personalised parameters into meta embeddings: [..., P] (leading axes = members)."""
    leading = _leading_shape(params)
    return torch.cat([value.reshape(*leading, -1) for value in params.values()], dim=-1)


def unflatten_params(flat: torch.Tensor, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of flatten_params, shapes taken from the unbatched `template` (e.g. net.head_params())."""
    leading = flat.shape[:-1]
    out, offset = {}, 0
    for name, value in template.items():
        size = value.numel()
        out[name] = flat[..., offset:offset + size].reshape(*leading, *value.shape)
        offset += size
    if offset != flat.shape[-1]:
        raise ValueError(f"meta embedding has {flat.shape[-1]} floats, the sub-network's head needs {offset}")
    return out


def _leading_shape(params: dict[str, torch.Tensor]) -> tuple[int, ...]:
    # Bias vectors have one trailing axis; everything before it is the batch (member) shape.
    first_bias = next(value for name, value in params.items() if name.endswith("bias"))
    return tuple(first_bias.shape[:-1])
