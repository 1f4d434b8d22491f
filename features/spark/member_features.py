"""Member features as of the end of day D: activity over 1/7/28 days, recency of applying, attributes.

For each window w in {1, 7, 28}:
    m_impressions_wd, m_applies_wd                     counts of the member's events in (D-w, D]
    m_rate_wd = (applies + s p) / (impressions + s)    smoothed apply rate, p = global 28-day rate
and
    m_days_since_apply = min(end(D) - last apply, cap) (cap when the member never applied)
    m_tenure_days      = end(D) - signup_ts            (0 when unknown)
plus the member's attributes encoded (features.spark.attributes). Every member known by D gets a row,
so the online store never keeps a stale value for a member who went quiet.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.contract import EntitySchema
from features.spark.attributes import days_between, encoded_attributes
from features.spark.rates import smoothed_rate
from features.spark.windows import WINDOWS, applies_col, impressions_col


def windowed_activity(prefix: str, prior: Column | float, strength: float) -> list[Column]:
    """Counts and smoothed rates of every window, zero-filled for entities without events."""
    columns: list[Column] = []
    for w in WINDOWS:
        impressions = F.coalesce(F.col(impressions_col(w)), F.lit(0)).cast("long")
        applies = F.coalesce(F.col(applies_col(w)), F.lit(0)).cast("long")
        columns += [
            impressions.alias(f"{prefix}impressions_{w}d"),
            applies.alias(f"{prefix}applies_{w}d"),
            smoothed_rate(applies, impressions, prior, strength).alias(f"{prefix}rate_{w}d"),
        ]
    return columns


def member_features(members: DataFrame, state: DataFrame, schema: EntitySchema, as_of: Column,
                    prior: float, strength: float, recency_cap_days: float) -> DataFrame:
    joined = members.join(state, on="member_id", how="left")
    since_apply = F.least(days_between(as_of, F.col("last_apply_ts")), F.lit(recency_cap_days))
    signup = F.col(schema.timestamp) if schema.timestamp else F.lit(None).cast("timestamp")
    return joined.select(
        F.col("member_id"),
        *encoded_attributes(joined, schema, "m_"),
        *windowed_activity("m_", prior, strength),
        F.coalesce(since_apply, F.lit(recency_cap_days)).cast("float").alias("m_days_since_apply"),
        F.coalesce(F.greatest(days_between(as_of, signup), F.lit(0.0)), F.lit(0.0)).cast("float")
        .alias("m_tenure_days"),
    )
