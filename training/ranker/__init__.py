"""The LiRank-style deep ranker (arXiv 2402.06859): hashed embeddings, Residual DCN, Dense Gating,
an optional transformer over feature embeddings, and an isotonic calibration layer.

Imports only torch and numpy at module level (pyarrow and safetensors are imported inside the
functions that read Parquet or write checkpoints), so the package travels to GPU machines alone.
"""

from training.ranker.model import Ranker, RankerConfig

__all__ = ["Ranker", "RankerConfig"]
