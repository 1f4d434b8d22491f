"""Member x job-attribute affinities: how much a member applies to jobs of each industry, seniority, skill.

For member m, job attribute A (e.g. industry) and value v, over the last 28 days:

    affinity(m, A, v) = (applies(m, A=v) + s * r_m) / (impressions(m, A=v) + s)

where r_m is the member's own smoothed 28-day rate (m_rate_28d), so a value the member rarely saw
falls back to how the member behaves in general (value -> member -> global shrinkage). A multi-valued
attribute (skills) counts an impression once for each of the job's values.

Stored per member as two parallel arrays per attribute, sorted by value:
    a_<A>_values: array<string>,   a_<A>_rates: array<float>
so any consumer (training set, online service) looks the candidate job's value up by name; a value
not in the array means "no impressions in 28 days" and its affinity is r_m (features.assemble).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from features.contract import EntitySchema
from features.spark.rates import smoothed_rate
from features.spark.windows import WindowSpec, applies_col, impressions_col

AFFINITY_WINDOW = 28
AFFINITY_SPEC = WindowSpec(name="member_affinity", keys=("member_id", "attribute", "value"),
                           windows=(AFFINITY_WINDOW,), track_last_apply=False)


def affinity_attributes(items_schema: EntitySchema, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The configured job attributes that the items table actually has, in configured order."""
    available = set(items_schema.categorical) | set(items_schema.multi_valued)
    return tuple(a for a in wanted if a in available)


def attribute_events(events: DataFrame, items: DataFrame, items_schema: EntitySchema,
                     attributes: tuple[str, ...]) -> DataFrame:
    """One row per (event, job attribute, value): the input of the affinity daily aggregate."""
    joined = events.select("member_id", "item_id", "label").join(items, on="item_id", how="inner")
    parts = []
    for attribute in attributes:
        if attribute in items_schema.multi_valued:
            value = F.explode(F.array_distinct(F.col(attribute)))
        else:
            value = F.col(attribute)
        parts.append(joined.select("member_id", "label", F.lit(attribute).alias("attribute"),
                                   value.alias("value")).where(F.col("value").isNotNull()))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    return union


def member_affinities(members: DataFrame, state: DataFrame, member_rates: DataFrame,
                      attributes: tuple[str, ...], strength: float) -> DataFrame:
    """Per member the arrays of every attribute; members without impressions get empty arrays."""
    rated = state.join(member_rates, on="member_id", how="inner").select(
        "member_id", "attribute", "value",
        smoothed_rate(F.col(applies_col(AFFINITY_WINDOW)), F.col(impressions_col(AFFINITY_WINDOW)),
                      F.col("m_rate_28d"), strength).alias("rate"),
    )
    # One shuffle for every attribute: pivot the sorted (value, rate) lists by attribute.
    pivoted = (rated.groupBy("member_id").pivot("attribute", list(attributes))
               .agg(F.sort_array(F.collect_list(F.struct("value", "rate")))))
    columns = [F.col("member_id")]
    for attribute in attributes:
        pairs = F.col(f"`{attribute}`")
        columns += [F.coalesce(pairs.getField("value"), F.array().cast("array<string>")).alias(f"a_{attribute}_values"),
                    F.coalesce(pairs.getField("rate"), F.array().cast("array<float>")).alias(f"a_{attribute}_rates")]
    return members.select("member_id").join(pivoted, on="member_id", how="left").select(*columns)
