"""Training examples of day D: every event of D with the features as they were at the end of D-1.

The rows come from Feast's point-in-time join (`get_historical_features`), not from a side path: the
entity frame is D's events with event_timestamp = ts, and a feature row stamped end of day d (d+1 00:00)
joins an event at ts only when d+1 00:00 <= ts, i.e. d <= D-1. An event never sees the day it belongs to,
so its own label cannot leak into its features. `features.assemble.assemble_rows` then computes the model
inputs, exactly as the service does online.

Feast's file offline store (feast/infra/offline_stores/dask.py, 0.67) loses entity rows in two ways, so the
entity frame is shaped to give it no chance to:
- `_filter_ttl` runs after a left merge of the entity rows with every feature row of their key and keeps only
  feature rows stamped <= the event; an entity whose rows are all stamped later (a member or job that first
  appears on D or after) has nothing left, and its entity row disappears instead of getting nulls. A day
  rebuilt once later days exist therefore lost the events of new members and jobs (1,952 of 2,000 rows on
  the tiny marketplace). Rows Feast drops are exactly the keys with no feature row at or before the event,
  so they are joined back with null features.
- `_drop_duplicates` keeps one row per (join keys seen so far, event_timestamp): two events of one member at
  one instant (different jobs) would collapse once the member view is joined.
Hence one call per view with one entity row per distinct join key of D (at its first event: every event of D
sees the same rows of a key, all stamped at day boundaries), each tagged with a row number that Feast carries
through, joined back onto the events by that number and then by key.

A view joins only when it has a partition of a day before D (partition dt=d is stamped d+1 00:00, so only
those can match an event of D); partitions of D and later days never change D's rows or columns, which keeps
a rebuilt day byte-identical to its first build (meta_embedding, written by personalisation after later
days, included). A day first built before rows were assembled in batches (b1aca75) carried pandas' schema
metadata in its footer: its first rebuild differs in those bytes only.

Rows are assembled `BATCH_ROWS` events at a time and the day is held as Arrow (`build_training_set`): the
same table and bytes for any batch size (checked at 2M events: 8 batches against one). The joined list columns
(bags, affinity names and rates) reach assembly Arrow-backed (pd.ArrowDtype) and its bags leave it so: no Python
object per list (a 100x day: the same bytes, 30-40 s less).

Written (validated first) to features/training_set/dt=D/part-0.parquet and features/training_set/spec.json.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.assemble import EMBEDDINGS, assemble_rows, input_spec, is_list_type
from features.contract import PART_FILE, parquet_bytes, read_raw
from features.spark.build import AFFINITY_TABLE, JOB_TABLE, MEMBER_TABLE
from features.store import feature_store
from rankflow.config import Settings
from rankflow.paths import atomic_directory, atomic_write_bytes, partition_days, read_json

TABLE = "training_set"
SOURCE_VIEWS = (MEMBER_TABLE, JOB_TABLE, AFFINITY_TABLE)
OPTIONAL_VIEWS = ("meta_embedding",)  # joined once personalisation has written it
ENTITY_ROW = "__entity_row"  # numbers the entity rows handed to Feast
BATCH_ROWS = 250_000  # events assembled at a time (build_training_set)


def _has_data_before(settings: Settings, view: str, day: date) -> bool:
    """Whether `view` has a partition of a day before `day` (the only ones an event of `day` can join)."""
    prefix = "dt="
    for part in settings.paths.feature_table(view).glob(f"{prefix}*/{PART_FILE}"):
        try:
            partition_day = date.fromisoformat(part.parent.name[len(prefix):])
        except ValueError as error:
            raise ValueError(f"{part.parent}: partition folder must be named dt=YYYY-MM-DD") from error
        if partition_day < day:
            return True
    return False


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


def _key_rows(store, view: str, key: str, events: pd.DataFrame) -> pd.DataFrame:
    """One view's features for each distinct key of one day's events (a row per key, in first-event order),
    by Feast's point-in-time join.

    Feature rows are stamped at day boundaries (end of their day), so every event of day D sees the same rows
    of its key (those stamped at or before D 00:00): one entity row per key, at its first event, gives each of
    its events the row that a join of every (key, ts) pair would (5-6x fewer entity rows on the demo's days).
    """
    if len(events) and events["ts"].min().normalize() != events["ts"].max().normalize():
        raise ValueError(f"training set join of {view}: the events span more than one day "
                         f"({events['ts'].min()} .. {events['ts'].max()})")
    pairs = events[[key, "ts"]].drop_duplicates(key, ignore_index=True)
    entity_df = pd.DataFrame({ENTITY_ROW: range(len(pairs)), key: pairs[key], "event_timestamp": pairs["ts"]})
    refs = [f"{view}:{field.name}" for field in store.get_feature_view(view).features]
    joined = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    features = [ref.split(":", 1)[1] for ref in refs]
    if joined[ENTITY_ROW].duplicated().any() or not joined[ENTITY_ROW].isin(entity_df[ENTITY_ROW]).all():
        raise RuntimeError(f"feast get_historical_features({view}): expected at most one row per entity row")
    # Entity rows Feast dropped (no feature row at or before the event) come back with null features.
    joined = pairs.assign(**{ENTITY_ROW: entity_df[ENTITY_ROW]}).merge(
        joined[[ENTITY_ROW, *features]], on=ENTITY_ROW, how="left", validate="one_to_one")
    return joined.drop(columns=[ENTITY_ROW, "ts"])


class _DayRows:
    """D's events (sorted by ts, event_id) and, per joined view, its rows by key: rows for any slice of the
    events without joining again (Feast is asked once per view and day; a slice only gathers rows)."""

    def __init__(self, settings: Settings, day: date):
        store = feature_store(settings)
        events = read_raw(settings.paths, "events", day=day)
        self.events = events.sort_values(["ts", "event_id"], kind="stable", ignore_index=True)
        # Per view, in order: its feature names (no partition before D: null columns, every entity is cold)
        # or (its rows by key, as Arrow: bags and strings are not Python objects; each event's row in them).
        self.views: list[list[str] | tuple[pa.Table, np.ndarray]] = []
        for name in [*SOURCE_VIEWS, *(v for v in OPTIONAL_VIEWS if _has_data_before(settings, v, day))]:
            view = store.get_feature_view(name)
            if not _has_data_before(settings, name, day):
                self.views.append([field.name for field in view.features])
                continue
            key, = view.join_keys
            rows = _key_rows(store, name, key, self.events)
            self.views.append((pa.Table.from_pandas(rows.drop(columns=[key]), preserve_index=False),
                               pd.Index(rows[key]).get_indexer(self.events[key]).astype(np.int64)))

    def __len__(self) -> int:
        return len(self.events)

    def rows(self, start: int = 0, stop: int | None = None) -> pd.DataFrame:
        """Events start..stop joined with the views' columns (raw Feast output, before assembly)."""
        events = self.events.iloc[start:stop].reset_index(drop=True)
        columns = {"event_timestamp": events["ts"]}
        for view in self.views:
            if isinstance(view, list):
                columns |= {name: None for name in view}
            else:
                rows, position = view
                columns |= _pandas(rows.take(position[start:stop]))
        return events.assign(**columns)


def _pandas(table: pa.Table) -> dict[str, pd.Series]:
    """Joined columns as assembly reads them, in the table's order: lists (bags, affinity names and rates) stay
    Arrow-backed (pd.ArrowDtype), so no Python object is made per row and per list; the rest go through the
    table's own to_pandas (its pandas metadata: the dtypes Feast's frame had)."""
    lists = {name for name, field in zip(table.column_names, table.schema)
             if is_list_type(field.type) and name not in EMBEDDINGS}
    others = table.drop_columns(list(lists)).to_pandas()
    return {name: pd.Series(pd.arrays.ArrowExtensionArray(table.column(name))) if name in lists else others[name]
            for name in table.column_names}


def historical_rows(settings: Settings, day: date) -> pd.DataFrame:
    """D's events joined point-in-time with the feature views (raw Feast output, before assembly).

    A view with no partition before D (the first day) contributes null columns: every entity is cold.
    """
    return _DayRows(settings, day).rows()


def _arrow_rows(assembled: pd.DataFrame, spec: dict) -> pa.Table:
    # Without pandas' schema metadata: it describes the frame it came from (a bag that is empty in every row
    # of a batch is typed "empty"), so batches would disagree; the Arrow types alone read back the same frame.
    table = pa.Table.from_pandas(assembled, preserve_index=False).replace_schema_metadata(None)
    # A bag column whose lists are all empty (day 1: no job or member has features yet) would be typed
    # list<null>; every day must have the same schema, so bags are always list<string>.
    for column in spec["multi_valued"]:
        if column in table.column_names and table.schema.field(column).type != pa.list_(pa.string()):
            index = table.column_names.index(column)
            table = table.set_column(index, column, table.column(column).cast(pa.list_(pa.string())))
    return table


def _one_table(tables: list[pa.Table], specs: list[dict], where: str) -> tuple[pa.Table, dict]:
    """The batches as one table and one spec. An embedding column appears in a batch only where one of its
    members has an embedding: batches without it get a null column, as one frame of the whole day would.
    Every embedding of a column must have one length (the spec's), whichever batch it is in."""
    spec = dict(specs[0], embeddings={})
    for part in specs:
        if {k: v for k, v in part.items() if k != "embeddings"} != {k: v for k, v in spec.items() if k != "embeddings"}:
            raise RuntimeError(f"{where}: training set batches disagree on their columns: {part} vs {spec}")
        for name in part["embeddings"]:
            spec["embeddings"].setdefault(name, None)
    filled = []
    for table in tables:
        for name in spec["embeddings"]:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.list_(pa.float32())))
        filled.append(table)
    table = pa.concat_tables(filled)
    for name in spec["embeddings"]:
        lengths = pc.unique(pc.list_value_length(table.column(name)).drop_null()).to_pylist()
        if len(lengths) != 1:
            raise ValueError(f"{where}: the {name} rows joined for this day have lengths {sorted(lengths)}; one "
                             f"length per data directory (embeddings of meta models of different sizes?)")
        spec["embeddings"][name] = lengths[0]
    return table, spec


def build_training_set(settings: Settings, day: date, batch_rows: int = BATCH_ROWS,
                       on_batch: Callable[[int, int], None] | None = None) -> tuple[pa.Table, dict]:
    """The assembled training rows of day D (Arrow) and their spec (not yet validated or written).

    Rows are assembled `batch_rows` events at a time: model inputs are per-event, so the result is the same
    for any batch size, while Python objects (bags, strings) exist for one batch only; the day is held as
    Arrow, several times smaller. `on_batch(rows done, rows)` after each batch (a progress display).
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    roles = feature_roles(feature_store(settings), SOURCE_VIEWS)
    day_rows = _DayRows(settings, day)
    tables, specs = [], []
    for start in range(0, max(len(day_rows), 1), batch_rows):
        assembled = assemble_rows(day_rows.rows(start, start + batch_rows), roles=roles)
        assembled = assembled.drop(columns=[c for c in ("event_timestamp",) if c in assembled.columns])
        assembled["label"] = assembled["label"].astype("int8")
        assembled["weight"] = assembled["weight"].astype("float32")
        specs.append(input_spec(assembled))
        tables.append(_arrow_rows(assembled, specs[-1]))
        del assembled
        if on_batch is not None:
            on_batch(min(start + batch_rows, len(day_rows)), len(day_rows))
    return _one_table(tables, specs, f"{settings.paths.feature_partition(TABLE, day)}")


def validation_frame(table: pa.Table, spec: dict) -> pd.DataFrame:
    """The columns the training-set suite reads (key, label, weight, dense), as pandas: no bags or strings."""
    wanted = ["event_id", spec["label"], spec["weight"], *spec["dense"]]
    return table.select([c for c in dict.fromkeys(wanted) if c in table.column_names]).to_pandas()


def write_training_set(settings: Settings, day: date, table: pa.Table | pd.DataFrame, spec: dict) -> None:
    """Swap the day's partition in atomically, then spec.json when D is the newest day built.

    spec.json describes the newest partition: its columns are the same for every day of one schema, but its
    "embeddings" appear only from the first day meta embeddings exist, so a backfill of an older day must not
    overwrite the newest day's spec (a ranker trained after it would silently drop the meta embedding).
    """
    newer = [built for built in partition_days(settings.paths.feature_table(TABLE)) if built > day]
    with atomic_directory(settings.paths.feature_partition(TABLE, day)) as staging:
        if isinstance(table, pd.DataFrame):  # a frame assembled by hand (tests, tools)
            table = _arrow_rows(table, spec)
        (staging / PART_FILE).write_bytes(parquet_bytes(table))
    spec_path = settings.paths.feature_table(TABLE) / "spec.json"
    if newer and spec_path.exists():
        return
    atomic_write_bytes(spec_path, json.dumps(spec, indent=2).encode())


def read_spec(settings: Settings) -> dict:
    path = settings.paths.feature_table(TABLE) / "spec.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training set yet; run `rankflow features build` first")
    return read_json(path)
