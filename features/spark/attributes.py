"""Entity attributes encoded for the models: prefixed, typed, never null.

Categorical -> string (missing -> "__unknown__"), numeric -> float32 (missing -> 0.0), multi-valued ->
array<string> (missing -> []). Prefixes keep member and job columns apart in one training row:
`m_industry` is the member's industry, `j_industry` the job's.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.contract import EntitySchema

UNKNOWN = "__unknown__"


def encoded_attributes(entities: DataFrame, schema: EntitySchema, prefix: str) -> list[Column]:
    columns = [F.coalesce(F.col(c), F.lit(UNKNOWN)).alias(f"{prefix}{c}") for c in schema.categorical]
    columns += [F.coalesce(F.col(c).cast("float"), F.lit(0.0).cast("float")).alias(f"{prefix}{c}")
                for c in schema.numeric]
    columns += [F.coalesce(F.col(c), F.array().cast("array<string>")).alias(f"{prefix}{c}")
                for c in schema.multi_valued]
    return columns


def days_between(later: Column, earlier: Column) -> Column:
    """(later - earlier) in fractional days."""
    return (F.unix_micros(later) - F.unix_micros(earlier)).cast("double") / 86_400_000_000.0
