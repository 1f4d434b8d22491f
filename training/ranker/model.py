"""The ranker, assembled as in LiRank (arXiv 2402.06859, Figure "Jobs recommendation model"):

    tokens = [E(member), E(job), E(company), ..., mean-bag(skills), ...]        (embeddings.py)
    tokens = FeatureTransformer(tokens)                                         (optional, transformer.py)
    x_0    = tokens.flatten() ++ standardise(dense ++ meta embedding)            (normalization.py)
    x_L    = ResidualCross(x_0)                                                 (cross.py)
    s      = w^T GatedMLP(x_L) + b + s_wide + beta_pos - beta_1                 (gate.py, wide.py, position.py; the logit)
    p      = IsotonicCalibration(s)                                             (calibration.py)

The position term is the logged display position's shallow tower (position.py), present when the
training set has a position column (`position_feature`). The wide part s_wide (wide.py, `wide`) is a
linear logit over the same ids, bags and standardised dense columns (Wide & Deep): what logistic
regression learns, the ranker then learns too. Without a position (serving: the ranker
decides the order, so none is known) the logit is the one at position 1, and the calibration, fitted
on held-out rows at their logged positions, maps it to the probability of an apply *if the job is
shown first*: the number the service reports, the same for offline and online scoring.

The GLMix score is not an input: GLMix stacks on this ranker instead (GAME). The daily random-effect
update takes the serving ranker's calibrated logit as its offset (rankflow.stages.personalise), and the
service scores sigmoid(that logit + beta_m . phi(j) + gamma_j . phi(m)) (serving.scoring), so the effects
learn the ranker's residual day by day between its retrains. benchmarks/ranker_quality.py measures that
served score next to the ranker alone.

`RankerConfig` is the one typed description of a ranker; it is saved next to the weights so a
checkpoint rebuilds exactly (checkpoint.py). Every field has a default that runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kernels.alignment import aligned_width, pad_columns
from training.ranker.calibration import IsotonicCalibration
from training.ranker.cross import ResidualCross
from training.ranker.embeddings import EmbeddingBags, HashedEmbeddings
from training.ranker.gate import GatedMLP
from training.ranker.normalization import DenseNormalizer
from training.ranker.position import PositionBias
from training.ranker.transformer import FeatureTransformer
from training.ranker.wide import WideLinear

MODEL_VERSION = "lirank-v1"


@dataclass(frozen=True)
class RankerConfig:
    """Inputs (from the training-set spec) and architecture of one ranker."""

    # Inputs: single-valued sparse features (ids and categoricals), multi-valued bags, dense columns.
    sparse_features: tuple[str, ...] = ("member_id", "item_id")
    sparse_buckets: tuple[int, ...] = (1 << 16, 1 << 14)
    bag_features: tuple[str, ...] = ()
    bag_buckets: tuple[int, ...] = ()
    dense_features: tuple[str, ...] = ()
    # Fixed-width list<float32> columns (meta embedding): name -> width, appended to the dense input.
    vector_features: tuple[tuple[str, int], ...] = ()
    # Context column with the 1-based display position of the logged impression (None: no position term;
    # checkpoints written before the term existed load as None). Positions above max_position share its bias.
    position_feature: str | None = None
    max_position: int = 10
    # Architecture.
    embedding_dim: int = 16
    transformer_layers: int = 0
    transformer_heads: int = 2
    cross_layers: int = 2
    cross_rank: int = 32
    cross_attention: bool = True
    attention_temperature: float = 1.0
    mlp_widths: tuple[int, ...] = (256, 128)
    dense_gating: bool = True
    wide: bool = True                    # add the linear logit s_wide (wide.py) to the tower's
    calibration_knots: int = 64
    version: str = MODEL_VERSION

    def __post_init__(self) -> None:
        if len(self.sparse_features) != len(self.sparse_buckets):
            raise ValueError(
                f"RankerConfig: {len(self.sparse_features)} sparse_features but {len(self.sparse_buckets)} sparse_buckets"
            )
        if len(self.bag_features) != len(self.bag_buckets):
            raise ValueError(f"RankerConfig: {len(self.bag_features)} bag_features but {len(self.bag_buckets)} bag_buckets")
        if not self.sparse_features:
            raise ValueError("RankerConfig: at least one sparse feature is needed")

    @property
    def dense_dim(self) -> int:
        return len(self.dense_features) + sum(width for _, width in self.vector_features)

    @property
    def input_dim(self) -> int:
        return (len(self.sparse_features) + len(self.bag_features)) * self.embedding_dim + self.dense_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RankerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        # A checkpoint written before the wide part existed has none: it rebuilds (and scores) as it was.
        values = {"wide": False, **values}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"RankerConfig: unknown field(s) {unknown}")
        converted = {}
        for name, value in values.items():
            if name == "vector_features":
                value = tuple((str(n), int(w)) for n, w in value)

            elif isinstance(value, list):
                value = tuple(value)
            converted[name] = value
        return cls(**converted)

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], id_buckets: int = 1 << 16, categorical_buckets: int = 1 << 12, **architecture: Any
    ) -> "RankerConfig":
        """Inputs from a training-set spec.json (docs/contracts.md, "Training set").

        The position term follows spec["position"] (data.read_spec sets it when the partitions carry a
        position column) unless `position_feature` is passed (None turns it off).
        """
        architecture.setdefault("position_feature", spec.get("position"))
        sparse = [spec["member"], spec["item"], *spec.get("categorical", [])]
        buckets = [id_buckets, id_buckets] + [categorical_buckets] * len(spec.get("categorical", []))
        bags = list(spec.get("multi_valued", []))
        vectors = tuple((name, int(width)) for name, width in sorted(spec.get("embeddings", {}).items()))
        return cls(
            sparse_features=tuple(sparse), sparse_buckets=tuple(buckets),
            bag_features=tuple(bags), bag_buckets=tuple([categorical_buckets] * len(bags)),
            dense_features=tuple(spec.get("dense", [])), vector_features=vectors, **architecture,
        )


class Tower(nn.Module):
    """Everything after x_0: s = w^T GatedMLP(ResidualCross(x_0)) + b (the part torch.compile takes).

    x_0 is zero-padded to a multiple of 8 columns first (kernels.alignment): with an odd width
    (1677) every GEMM and elementwise pass runs on unaligned rows at a fraction of its rate. The
    padding columns stay zero through the cross layers and meet zero weights in the MLP, so s is
    unchanged; parameters keep their true shapes.
    """

    def __init__(self, config: RankerConfig):
        super().__init__()
        self.cross = ResidualCross(
            config.input_dim, config.cross_layers, config.cross_rank, config.cross_attention, config.attention_temperature
        )
        self.mlp = GatedMLP(config.input_dim, list(config.mlp_widths), gated=config.dense_gating)
        self.head = nn.Linear(self.mlp.out_dim, 1)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = pad_columns(x0, aligned_width(x0.shape[-1]))
        return self.head(self.mlp(self.cross(x0))).squeeze(-1)


class Ranker(nn.Module):
    """LiRank-style ranker: forward returns the logit s; `probability` applies the calibration."""

    def __init__(self, config: RankerConfig, sparse_gradients: bool = True):
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.embeddings = HashedEmbeddings(list(config.sparse_buckets), d, sparse=sparse_gradients)
        self.bags = EmbeddingBags(list(config.bag_buckets), d, sparse=sparse_gradients)
        self.transformer = (
            FeatureTransformer(d, config.transformer_heads, config.transformer_layers)
            if config.transformer_layers else None
        )
        self.normalizer = DenseNormalizer(config.dense_dim)
        self.tower = Tower(config)
        self.wide = (WideLinear(list(config.sparse_buckets), list(config.bag_buckets), config.dense_dim, sparse_gradients)
                     if config.wide else None)
        self.position = PositionBias(config.max_position) if config.position_feature else None
        self.calibration = IsotonicCalibration(config.calibration_knots)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters with sparse (row) gradients: the sparse optimiser's."""
        wide = self.wide.table_parameters() if self.wide is not None else []
        return [self.embeddings.weight, *(t.weight for t in self.bags.tables), *wide]

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse_ids = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse_ids]

    def forward(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        bag_values: list[torch.Tensor] | tuple = (),
        bag_offsets: list[torch.Tensor] | tuple = (),
        position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sparse [B, F] hashed ids, dense [B, D] raw values, bags as (values, offsets), optional [B]
        1-based positions (None: position 1) -> logits [B]."""
        tokens = self.embeddings(sparse)
        if self.config.bag_features:
            tokens = torch.cat([tokens, self.bags(list(bag_values), list(bag_offsets))], dim=1)
        if self.transformer is not None:
            tokens = self.transformer(tokens)
        standardised = self.normalizer(dense)
        logits = self.tower(torch.cat([tokens.flatten(1), standardised], dim=1))
        if self.wide is not None:
            logits = logits + self.wide(sparse, standardised, bag_values, bag_offsets)
        if self.position is not None:
            logits = logits + self.position(position)
        return logits

    @torch.no_grad()
    def probability(self, *inputs: Any) -> torch.Tensor:
        """Calibrated click probability for a batch (eval mode, no gradients)."""
        return self.calibration(self.forward(*inputs))
