"""Stage functions of meta-learned personalisation (LiMAML): weekly meta-training, daily embedding refresh.

`train_meta(settings, day)` meta-trains the sub-network (training/meta/maml.py) on the training-set window
ending the day before `day`, warm-started from the newest meta-initialisation before `day`, reports the
personalisation AUCs on `day` (held out), and saves the state to the model store as `rankflow-meta` (when
BentoML is importable; one per day: a re-run replaces the day's model) and then, last, to
<data_dir>/models/meta/dt=D/ (atomic), which later days start from.

`refresh_meta_embeddings(settings, day)` adapts the newest meta-initialisation at or before `day` on every
active member's capped recent history (the training set's events in [day - window + 1, day]; active = had an
event on `day`), flattens the adapted head into the member's meta embedding, gives members who arrived on
`day` without any event the meta-initialisation itself (cold start), validates the frame
(validation.check_personalisation) and writes it: first the day's rows to the online store (never replacing a
newer value), then last the offline partition features/meta_embedding/dt=D, the day's snapshot
(`daily_snapshot`: those rows and, for every other member with an embedding, its newest one, all stamped end of
D, so the ranker's point-in-time join serves them to events of D + 1 onwards and reads that one partition, not
every day's). That partition is what the next day starts from, so it is written last: a day with a partition is
fully published. A day is refused, before any write, when an earlier training-set day has no partition after
the newest earlier one (it failed or was never run: the next snapshot would carry on without it, and its
members' online values would stay stale); the error names the day(s) and the `rankflow meta` command to run
first. With no meta-initialisation yet, it meta-trains one first (`bootstrapped` in the result says so).
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import date, timedelta
from pathlib import Path

from rankflow.config import Settings
from rankflow.errors import MissingInput
from rankflow.logs import get_logger
from rankflow.model_store import register_daily_model
from rankflow.paths import atomic_directory

log = get_logger(__name__)

VIEW = "meta_embedding"
MODEL_NAME = "rankflow-meta"
TRAINING_SET = "training_set"
JOB_PREFIX = "j_"
LOSS_STEPS = 20  # the query loss is logged as a mean over this many outer steps (one step = one batch of members)


def meta_root(settings: Settings) -> Path:
    return settings.paths.models / "meta"


def version_tag(day: date) -> str:
    return f"meta-{day.isoformat()}"


# ---- data ---------------------------------------------------------------------------------------------
def read_interactions(settings: Settings, start: date, end: date, config):
    """The training-set events of [start, end] as Interactions (training.meta.tasks), read a day at a time.

    Only the columns the sub-network reads come off disk (ids, time, label, weight and its job-side inputs: a
    dozen of the training set's ~50; the member-side skill bags alone are as large as the rest), and each day is
    hashed and encoded before the next is read, so the peak is one day's pandas frame plus the encoded arrays, not
    the whole window as Python objects (at 100x the demo size, two days of it alone took 4 GB). A column the sub-network
    needs that no partition of the window has raises KeyError naming it; one that only older partitions lack reads
    as missing values there (as a concatenation of the partitions would).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.contract import PART_FILE
    from rankflow.paths import dt_partition, partition_days
    from training.meta.frames import interactions_from_frame
    from training.meta.tasks import Interactions

    table_dir = settings.paths.feature_table(TRAINING_SET)
    available = partition_days(table_dir)
    if not available:
        raise FileNotFoundError(f"{table_dir}: no dt=YYYY-MM-DD partitions")
    files = [table_dir / dt_partition(d) / PART_FILE for d in available if start <= d <= end] \
        or [table_dir / dt_partition(available[-1]) / PART_FILE]  # none in range: the newest schema, no rows
    sub = config.subnetwork
    needed = ["member_id", "ts", "label", "weight", *sub.categorical_columns, *sub.multi_valued_columns,
              *sub.dense_columns]
    schemas = [pq.read_schema(path) for path in files]
    known = {name: schema.field(name).type for schema in schemas for name in schema.names if name in needed}
    parts = []
    for path, schema in zip(files, schemas):
        table = pq.read_table(path, columns=[c for c in needed if c in schema.names])
        for name in (c for c in needed if c in known and c not in schema.names):
            table = table.append_column(name, pa.nulls(table.num_rows, known[name]))
        if not (start <= date.fromisoformat(path.parent.name.removeprefix("dt=")) <= end):
            table = table.slice(0, 0)
        parts.append(interactions_from_frame(table.to_pandas(), sub, max_bag_size=config.max_bag_size))
    return Interactions(**{field: np.concatenate([getattr(part, field) for part in parts])
                           for field in Interactions.__dataclass_fields__})


def subnetwork_columns(spec: dict) -> dict[str, tuple[str, ...]]:
    """The job-side inputs of the sub-network, from spec.json: every j_ categorical, multi-valued and dense."""
    pick = lambda role: tuple(c for c in spec.get(role, []) if c.startswith(JOB_PREFIX))  # noqa: E731
    columns = {"categorical_columns": pick("categorical"), "multi_valued_columns": pick("multi_valued"),
               "dense_columns": pick("dense")}
    if not any(columns.values()):
        raise ValueError(f"training-set spec has no job-side ({JOB_PREFIX}*) columns: {spec}")
    return columns


def _epoch_day(day: date) -> int:
    return (day - date(1970, 1, 1)).days


# ---- weekly meta-training -------------------------------------------------------------------------------
def train_meta(settings: Settings, day: date, config=None, progress=None) -> dict:
    """Meta-train on the window before `day`, evaluate on `day`, save models/meta/dt=D. Idempotent per day."""
    import numpy as np
    import torch

    from features.training_set import read_spec
    from training.meta.config import MetaConfig
    from training.meta.evaluate import evaluate_personalisation
    from training.meta.maml import meta_train
    from training.meta.state import latest_state, load_state, save_state
    from training.meta.subnetwork import SubNetwork
    from training.meta.tasks import concat_tasks, query_day_tasks

    started = time.perf_counter()
    previous = latest_state(meta_root(settings), day, strictly_before=True)
    if previous is not None:
        # Warm start: the architecture (and its input columns) is the saved one; `config` may change only
        # how it is trained. New training-set columns join at a fresh start (a new data directory).
        net, saved_config, _ = load_state(previous)
        config = dataclasses.replace(config or saved_config, subnetwork=saved_config.subnetwork)
    config = config or MetaConfig()
    tasks_config = config.tasks
    # Query days: the `query_days` days before `day`; each needs `window_days` of history before it.
    first_query = day - timedelta(days=config.query_days)
    if previous is None:
        config = dataclasses.replace(config, subnetwork=dataclasses.replace(
            config.subnetwork, **subnetwork_columns(read_spec(settings))))
        torch.manual_seed(config.outer.seed)
        net = SubNetwork(config.subnetwork)
    interactions = read_interactions(settings, first_query - timedelta(days=tasks_config.window_days), day, config)
    query_days = [d for d in np.unique(interactions.day) if _epoch_day(first_query) <= d < _epoch_day(day)]
    tasks = concat_tasks([query_day_tasks(interactions, int(d), tasks_config) for d in query_days])
    if len(tasks) == 0:
        raise ValueError(f"meta training for {day}: no events on the query days "
                         f"{first_query}..{day - timedelta(days=1)} in {settings.paths.feature_table(TRAINING_SET)}")
    inputs = interactions.job_inputs()
    labels, weights = interactions.targets()
    if previous is None:
        net.fit_dense_scaling(inputs.dense[interactions.day < _epoch_day(day)])
    history = meta_train(net, inputs, labels, weights, tasks, config.outer, config.inner, on_step=progress)
    buckets = evaluate_personalisation(net, interactions, _epoch_day(day), tasks_config, config.inner)
    loss_first, loss_last = history.mean_query_loss(LOSS_STEPS)
    metrics = {"query_loss_first": history.query_loss[0], "query_loss_last": history.query_loss[-1],
               f"query_loss_first_{LOSS_STEPS}_mean": loss_first, f"query_loss_last_{LOSS_STEPS}_mean": loss_last,
               "seconds_per_outer_step": history.seconds_per_step, "tasks": len(tasks),
               "eval": [dataclasses.asdict(b) for b in buckets]}
    metadata = {"logical_date": day.isoformat(), "warm_start_from": str(previous) if previous else None,
                "query_days": [str(date(1970, 1, 1) + timedelta(days=int(d))) for d in query_days],
                "metrics": metrics, "embedding_length": config.subnetwork.embedding_length}
    target = meta_root(settings) / f"dt={day.isoformat()}"
    with atomic_directory(target) as staging:  # the state later days start from: swapped in last
        save_state(staging, net, config, metadata)
        # Status serving: the daily refresh reads the newest state at or before its day straight away (there is
        # no promotion step for the meta-init; the ranker, which reads the embeddings, has one). Files and metadata
        # are compared as they are: config.json holds the run's timings, so a re-run replaces the day's model.
        bento_tag = register_daily_model(settings, MODEL_NAME, staging, day, {"eval": json.dumps(metrics["eval"])})
    log.info("meta-init %s: %d tasks, query loss (mean of the first / last %d outer steps) %.4f -> %.4f", day,
             len(tasks), LOSS_STEPS, loss_first, loss_last)
    return {"day": day.isoformat(), "state": str(target), "warm_started": previous is not None,
            "tasks": len(tasks), "bentoml_tag": bento_tag, "metrics": metrics,
            "seconds": round(time.perf_counter() - started, 2)}


# ---- daily refresh -----------------------------------------------------------------------------------------
def compute_meta_embeddings(settings: Settings, day: date):
    """(frame of member_id / meta_embedding / version, summary dict) for `day`, not yet validated or written."""
    import numpy as np
    import pandas as pd
    import torch

    from features.contract import read_raw
    from training.meta.adapt import meta_embeddings
    from training.meta.state import latest_state, load_state
    from training.meta.tasks import embed_set, support_sets

    state_dir = latest_state(meta_root(settings), day)
    if state_dir is None:
        raise FileNotFoundError(f"{meta_root(settings)}: no meta-initialisation at or before {day}")
    net, config, metadata = load_state(state_dir)
    window_start = day - timedelta(days=config.tasks.window_days - 1)
    interactions = read_interactions(settings, window_start, day, config)
    active = np.unique(interactions.member_id[interactions.day == _epoch_day(day)])
    arrived = read_raw(settings.paths, "members", day=day)["member_id"].to_numpy(dtype=np.int64)
    members = np.union1d(active, arrived)
    tasks = support_sets(interactions, members, _epoch_day(day), config.tasks)
    inputs = interactions.job_inputs()
    labels, weights = interactions.targets()
    chunk = 16_384
    parts, fallbacks = [], 0
    with torch.no_grad():
        for start in range(0, len(tasks), chunk):
            rows = torch.from_numpy(tasks.support[start:start + chunk])
            hidden, support_labels, support_weights = embed_set(net, rows, inputs, labels, weights)
            embedding, bad = meta_embeddings(net, hidden, support_labels, support_weights, config.inner)
            parts.append(embedding.numpy().astype(np.float32))
            fallbacks += bad
    embeddings = np.concatenate(parts) if parts else np.zeros((0, config.subnetwork.embedding_length), np.float32)
    result = pd.DataFrame({"member_id": tasks.member_id, VIEW: list(embeddings),
                           "version": version_tag(date.fromisoformat(metadata["logical_date"]))})
    summary = {"members": len(tasks), "active": int(active.size),
               "cold_start": int((tasks.support_count == 0).sum()), "non_finite_fallbacks": fallbacks,
               "embedding_length": int(embeddings.shape[1]), "meta_init": str(state_dir)}
    return result, summary


def _end_of_day(day: date):
    import pandas as pd

    from features.contract import end_of_day

    # Unit s, as these partitions have always been written (timestamp[ms] in Parquet): another unit would give
    # the table's partitions two column types.
    return pd.Timestamp(end_of_day(day)).as_unit("s")


def daily_snapshot(settings: Settings, day: date, frame):
    """Every member's newest meta embedding at the end of `day`: `frame` (the day's rows) and, for members not
    in it, their rows in the newest earlier partition, restamped with the end of `day`.

    An earlier partition written before partitions were snapshots (no mark in its footer) holds only its day's
    members: then the newest row of each member over every earlier partition is used, once.
    """
    import pandas as pd

    from features.contract import partition_days
    from features.offline_store import is_marked_snapshot

    table = settings.paths.feature_table(VIEW)
    earlier = [d for d in partition_days(table) if d < day]
    if not earlier:
        return frame
    newest = settings.paths.feature_partition(VIEW, earlier[-1])
    if is_marked_snapshot(newest):
        previous = pd.read_parquet(newest, columns=list(frame.columns))
    else:
        parts = [pd.read_parquet(settings.paths.feature_partition(VIEW, d), columns=list(frame.columns))
                 for d in earlier]
        previous = pd.concat(parts, ignore_index=True).drop_duplicates("member_id", keep="last")
    stamp = _end_of_day(day)
    carried = previous[~previous["member_id"].isin(frame["member_id"])].assign(event_timestamp=stamp, created_ts=stamp)
    return pd.concat([carried, frame], ignore_index=True).sort_values("member_id", kind="stable", ignore_index=True)


def check_no_skipped_day(settings: Settings, day: date) -> None:
    """Refuse `day` when an earlier training-set day has no meta_embedding partition after the newest earlier
    one (nothing written): the day's snapshot would carry on without it."""
    from rankflow.paths import partition_days
    from rankflow.stages.personalise import run_first, skipped_days

    table = settings.paths.feature_table(VIEW)
    done = partition_days(table)
    skipped = skipped_days(partition_days(settings.paths.feature_table(TRAINING_SET)), done, day)
    if skipped:
        one, newest = len(skipped) == 1, max(d for d in done if d < day)
        raise MissingInput(
            f"meta embeddings {day}: {', '.join(map(str, skipped))} {'has' if one else 'have'} a training set but "
            f"no partition in {table} (never run, or failed before the partition was written), so {day} would "
            f"carry on from {newest}'s and {'its' if one else 'their'} members' embeddings would never be "
            f"published; nothing was written. Run {run_first('rankflow meta', skipped)} first, then {day}")


def refresh_meta_embeddings(settings: Settings, day: date) -> dict:
    """Daily: adapted meta embeddings of the day's active (and newly arrived) members -> online, then offline.

    Refused before any write when an earlier day was skipped (check_no_skipped_day). After the bootstrap
    meta-training (if any), everything that can fail on the data (the embeddings, their validation, the
    snapshot, opening the feature store) runs before the first write; then the online store gets the day's
    rows and the offline partition, which the next day's snapshot starts from, is swapped in last. A failure
    in between leaves no partition of D: the next day is refused, and re-running D writes the same rows again
    (deterministic given the same meta-init and inputs).
    """
    from features.store import check_online_store, feature_store, online_write, write_offline_partition
    from training.meta.state import latest_state
    from validation.personalisation import check_personalisation

    check_no_skipped_day(settings, day)
    check_online_store(settings)  # a broken one: said now, not after the day's work and its validation report
    started = time.perf_counter()
    bootstrapped = None
    if latest_state(meta_root(settings), day) is None:
        log.info("no meta-initialisation at or before %s: meta-training one first", day)
        bootstrapped = train_meta(settings, day)["state"]
    frame, summary = compute_meta_embeddings(settings, day)
    frame["event_timestamp"] = frame["created_ts"] = _end_of_day(day)  # deterministic: a re-run is byte-identical
    check_personalisation(VIEW, frame, day, reports_dir=settings.paths.reports,
                          key_column="member_id", vector_columns=[VIEW])
    snapshot = daily_snapshot(settings, day, frame)
    # Not features.store.write_features: that writes the offline partition first, and here the partition is
    # the commit point the next day reads, so the online store goes first.
    online = online_write(feature_store(settings), VIEW, frame)
    partition = write_offline_partition(settings.paths, VIEW, day, snapshot, mark_snapshot=True)
    written = {"partition": str(partition), **online.to_dict()}
    return {"day": day.isoformat(), **summary, "snapshot_members": len(snapshot), "bootstrapped": bootstrapped,
            "write": written, "seconds": round(time.perf_counter() - started, 2)}
