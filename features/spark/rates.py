"""Smoothed apply rates: a Beta prior turns sparse counts into rates a model can trust.

    rate = (applies + s * prior) / (impressions + s)

(the posterior mean of a Beta(s * prior, s * (1 - prior)) prior after `impressions` trials). With no
impressions the rate is the prior; with many it tends to applies / impressions. `s` (prior strength,
in pseudo-impressions) comes from FeatureConfig.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F


def smoothed_rate(applies: Column, impressions: Column, prior: Column | float, strength: float) -> Column:
    prior_col = prior if isinstance(prior, Column) else F.lit(float(prior))
    return ((applies + F.lit(strength) * prior_col) / (impressions + F.lit(strength))).cast("float")
