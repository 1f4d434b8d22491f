"""Job features as of the end of day D: the member features' counts and rates, posting age, popularity.

    j_impressions_wd, j_applies_wd, j_rate_wd          as for members (features.spark.member_features)
    j_age_days        = end(D) - posted_ts             (0 when unknown)
    j_popularity_7d   = impressions_7d(job) / mean over known jobs of impressions_7d   (1.0 = average)
    j_days_since_apply                                 recency of the job's last apply (cap if none)
plus the job's attributes encoded. Every job known by D gets a row.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.contract import EntitySchema
from features.spark.attributes import days_between, encoded_attributes
from features.spark.member_features import windowed_activity
from features.spark.windows import impressions_col


def job_features(items: DataFrame, state: DataFrame, schema: EntitySchema, as_of: Column,
                 prior: float, strength: float, recency_cap_days: float, mean_7d: float) -> DataFrame:
    """`mean_7d`: mean over known jobs of impressions_7d (computed with the day's other totals)."""
    joined = items.join(state, on="item_id", how="left")
    popularity = (F.coalesce(F.col(impressions_col(7)), F.lit(0)) / F.lit(mean_7d)) if mean_7d else F.lit(0.0)
    since_apply = F.least(days_between(as_of, F.col("last_apply_ts")), F.lit(recency_cap_days))
    posted = F.col(schema.timestamp) if schema.timestamp else F.lit(None).cast("timestamp")
    return joined.select(
        F.col("item_id"),
        *encoded_attributes(joined, schema, "j_"),
        *windowed_activity("j_", prior, strength),
        F.coalesce(F.greatest(days_between(as_of, posted), F.lit(0.0)), F.lit(0.0)).cast("float").alias("j_age_days"),
        popularity.cast("float").alias("j_popularity_7d"),
        F.coalesce(since_apply, F.lit(recency_cap_days)).cast("float").alias("j_days_since_apply"),
    )
