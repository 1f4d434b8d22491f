"""rankflow's Feast declarations: entities, sources, feature views, feature services. Nothing else.

This file is rendered (copied) into `<data_dir>/feast/` next to a `feature_store.yaml` made from
Settings (features.store). Sources are paths relative to that rendered repo (`../features/<table>`),
which Feast resolves against the repo path, so the registry works wherever the data dir lives. With the
Spark offline store the sources are SparkSources on the same folders. Attribute columns come from
the raw zone's `raw/schema.yaml`, so bring-your-own data declares its own attributes.
"""

from datetime import timedelta
from pathlib import Path

import yaml
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

REPO = Path(__file__).resolve().parent
DATA_DIR = REPO.parent
_config = yaml.safe_load((REPO / "feature_store.yaml").read_text()) if (REPO / "feature_store.yaml").exists() else {}
_offline = (_config.get("offline_store") or {}).get("type", "file")
_raw_schema_file = DATA_DIR / "raw" / "schema.yaml"
_raw_schema = yaml.safe_load(_raw_schema_file.read_text()) if _raw_schema_file.exists() else {}
WINDOWS = (1, 7, 28)
AFFINITY_ATTRIBUTES = ("industry", "seniority", "skills")

member = Entity(name="member", join_keys=["member_id"], value_type=ValueType.INT64,
                description="A member of the marketplace (a job seeker).")
job = Entity(name="job", join_keys=["item_id"], value_type=ValueType.INT64, description="A job posting.")


def _source(table: str):
    """The features-zone folder of `table` (dt=D partitions) as Feast's offline source."""
    if _offline == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=table, path=str(DATA_DIR / "features" / table), file_format="parquet",
                           timestamp_field="event_timestamp", created_timestamp_column="created_ts")
    return FileSource(name=table, path=f"../features/{table}", timestamp_field="event_timestamp",
                      created_timestamp_column="created_ts")


def _attributes(table: str, prefix: str) -> list[Field]:
    roles = _raw_schema.get(table) or {}
    fields = [Field(name=f"{prefix}{c}", dtype=String) for c in roles.get("categorical") or []]
    fields += [Field(name=f"{prefix}{c}", dtype=Float32) for c in roles.get("numeric") or []]
    fields += [Field(name=f"{prefix}{c}", dtype=Array(String)) for c in roles.get("multi_valued") or {}]
    return fields


def _activity(prefix: str) -> list[Field]:
    fields = []
    for w in WINDOWS:
        fields += [Field(name=f"{prefix}impressions_{w}d", dtype=Int64), Field(name=f"{prefix}applies_{w}d", dtype=Int64),
                   Field(name=f"{prefix}rate_{w}d", dtype=Float32)]
    return fields


def _affinity_fields() -> list[Field]:
    roles = _raw_schema.get("items") or {}
    available = set(roles.get("categorical") or []) | set(roles.get("multi_valued") or {})
    fields = []
    for attribute in (a for a in AFFINITY_ATTRIBUTES if a in available or not _raw_schema):
        fields += [Field(name=f"a_{attribute}_values", dtype=Array(String)),
                   Field(name=f"a_{attribute}_rates", dtype=Array(Float32))]
    return fields


# ttl 0: a value stays valid until the next day's row replaces it (every known entity gets a row daily).
# Daily snapshots (each partition holds every entity known by its day; features.offline_store reads only the
# newest one a point-in-time join can use):
DAILY_SNAPSHOT = {"rankflow.snapshot": "daily"}
member_features = FeatureView(
    name="member_features", entities=[member], ttl=timedelta(0), source=_source("member_features"),
    schema=[Field(name="member_id", dtype=Int64), *_attributes("members", "m_"), *_activity("m_"),
            Field(name="m_days_since_apply", dtype=Float32), Field(name="m_tenure_days", dtype=Float32)],
    tags=DAILY_SNAPSHOT,
    description="Member activity over 1/7/28 days, recency, encoded attributes (features.spark.member_features).",
)
job_features = FeatureView(
    name="job_features", entities=[job], ttl=timedelta(0), source=_source("job_features"),
    schema=[Field(name="item_id", dtype=Int64), *_attributes("items", "j_"), *_activity("j_"),
            Field(name="j_age_days", dtype=Float32), Field(name="j_popularity_7d", dtype=Float32),
            Field(name="j_days_since_apply", dtype=Float32)],
    tags=DAILY_SNAPSHOT,
    description="Job activity over 1/7/28 days, posting age, popularity (features.spark.job_features).",
)
member_affinities = FeatureView(
    name="member_affinities", entities=[member], ttl=timedelta(0), source=_source("member_affinities"),
    schema=[Field(name="member_id", dtype=Int64), *_affinity_fields()],
    tags=DAILY_SNAPSHOT,
    description="Member's smoothed 28-day apply rate per job attribute value (features.spark.affinities).",
)
# Written by personalisation (features.store.write_features): GLMix random effects and meta-embeddings.
glmix_member = FeatureView(
    name="glmix_member", entities=[member], ttl=timedelta(0), source=_source("glmix_member"),
    schema=[Field(name="member_id", dtype=Int64), Field(name="member_re_mean", dtype=Array(Float32)),
            Field(name="member_re_variance", dtype=Array(Float32))],
    description="Per-member random effect over job attributes: posterior mean and variance (GLMix).",
)
glmix_job = FeatureView(
    name="glmix_job", entities=[job], ttl=timedelta(0), source=_source("glmix_job"),
    schema=[Field(name="item_id", dtype=Int64), Field(name="job_re_mean", dtype=Array(Float32)),
            Field(name="job_re_variance", dtype=Array(Float32))],
    description="Per-job random effect over member attributes: posterior mean and variance (GLMix).",
)
meta_embedding = FeatureView(
    name="meta_embedding", entities=[member], ttl=timedelta(0), source=_source("meta_embedding"),
    schema=[Field(name="member_id", dtype=Int64), Field(name="meta_embedding", dtype=Array(Float32))],
    # Snapshots since the partitions were marked as such (rankflow.stages.meta.daily_snapshot); older ones hold
    # only their day's members and are read whole.
    tags={**DAILY_SNAPSHOT, "rankflow.snapshot_marked": "true"},
    description="MAML-adapted per-member weights frozen into a fixed-size embedding (LiMAML).",
)

ranker = FeatureService(
    name="ranker",
    features=[member_features, job_features, member_affinities, glmix_member, glmix_job, meta_embedding],
    description="Everything the online ranker reads for (member, candidate job) pairs.",
)
personalisation = FeatureService(
    name="personalisation", features=[member_features, job_features, glmix_member, glmix_job],
    description="Attributes and current random effects for the daily GLMix / MAML updates.",
)
