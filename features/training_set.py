"""Training examples of day D: every event of D with the features as they were at the end of D-1.

The rows come from Feast's point-in-time join (`get_historical_features`), not from a side path: the
entity frame is D's events with event_timestamp = ts, and a feature row stamped end of day d (d+1 00:00)
joins an event at ts only when d+1 00:00 <= ts, i.e. d <= D-1. An event never sees the day it belongs to,
so its own label cannot leak into its features. `features.assemble.assemble_rows` then computes the model
inputs, exactly as the service does online.

Written (validated first) to features/training_set/dt=D/part-0.parquet and features/training_set/spec.json.
"""

from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pyarrow as pa

from features.assemble import assemble_rows, input_spec
from features.contract import PART_FILE, parquet_bytes, read_raw
from features.spark.build import AFFINITY_TABLE, JOB_TABLE, MEMBER_TABLE
from features.store import feature_store
from rankflow.config import Settings
from rankflow.paths import atomic_directory, atomic_write_bytes

TABLE = "training_set"
SOURCE_VIEWS = (MEMBER_TABLE, JOB_TABLE, AFFINITY_TABLE)
OPTIONAL_VIEWS = ("meta_embedding",)  # joined once personalisation has written it


def _has_data(settings: Settings, view: str) -> bool:
    return any(settings.paths.feature_table(view).glob(f"dt=*/{PART_FILE}"))


def feature_roles(store, views: tuple[str, ...]) -> dict[str, list[str]]:
    """Categorical / multi-valued / numeric member and job columns, from the views' declared types."""
    from feast.types import Array, PrimitiveFeastType, String

    roles: dict[str, list[str]] = {"categorical": [], "multi_valued": [], "numeric": []}
    for name in views:
        for field in store.get_feature_view(name).features:
            if not field.name.startswith(("m_", "j_")):
                continue
            if field.dtype == String:
                roles["categorical"].append(field.name)
            elif field.dtype == Array(String):
                roles["multi_valued"].append(field.name)
            elif isinstance(field.dtype, PrimitiveFeastType):
                roles["numeric"].append(field.name)
    return roles


def historical_rows(settings: Settings, day: date) -> pd.DataFrame:
    """D's events joined point-in-time with the feature views (raw Feast output, before assembly).

    A view with no partition at all yet (the first day) contributes null columns: every entity is cold.
    """
    store = feature_store(settings)
    events = read_raw(settings.paths, "events", day=day)
    entity_df = events.assign(event_timestamp=events["ts"])
    views = [*SOURCE_VIEWS, *(v for v in OPTIONAL_VIEWS if _has_data(settings, v))]
    refs, empty = [], []
    for name in views:
        fields = [field.name for field in store.get_feature_view(name).features]
        if _has_data(settings, name):
            refs += [f"{name}:{field}" for field in fields]
        else:
            empty += fields
    joined = store.get_historical_features(entity_df=entity_df, features=refs).to_df() if refs else entity_df
    joined = joined.assign(**{column: None for column in empty})
    # The offline store may reorder rows: restore the raw contract's (ts, event_id) order.
    return joined.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)


def build_training_set(settings: Settings, day: date) -> tuple[pd.DataFrame, dict]:
    """The assembled training rows of day D and their spec (not yet validated or written)."""
    roles = feature_roles(feature_store(settings), SOURCE_VIEWS)
    assembled = assemble_rows(historical_rows(settings, day), roles=roles)
    assembled = assembled.drop(columns=[c for c in ("event_timestamp",) if c in assembled.columns])
    assembled["label"] = assembled["label"].astype("int8")
    assembled["weight"] = assembled["weight"].astype("float32")
    return assembled, input_spec(assembled)


def write_training_set(settings: Settings, day: date, frame: pd.DataFrame, spec: dict) -> None:
    """Swap the day's partition in atomically, then spec.json (the same for every day of one schema)."""
    with atomic_directory(settings.paths.feature_partition(TABLE, day)) as staging:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        # A bag column whose lists are all empty (day 1: no job or member has features yet) would be typed
        # list<null>; every day must have the same schema, so bags are always list<string>.
        for column in spec["multi_valued"]:
            if column in table.column_names and table.schema.field(column).type != pa.list_(pa.string()):
                index = table.column_names.index(column)
                table = table.set_column(index, column, table.column(column).cast(pa.list_(pa.string())))
        (staging / PART_FILE).write_bytes(parquet_bytes(table))
    atomic_write_bytes(settings.paths.feature_table(TABLE) / "spec.json", json.dumps(spec, indent=2).encode())


def read_spec(settings: Settings) -> dict:
    path = settings.paths.feature_table(TABLE) / "spec.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training set yet; run `rankflow features build` first")
    return json.loads(path.read_text())
