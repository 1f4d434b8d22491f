"""Streaming loader: `features/training_set/dt=D/*.parquet` + `spec.json` -> model-ready tensors.

The layout is docs/contracts.md "Training set". Values become row ids by deterministic hashing
(same bucket in every process and on every machine, unlike Python's salted `hash`):

    integer ids (member_id, item_id):   row = 1 + splitmix64(v) mod (buckets - 1)
    strings (categoricals, bag values): row = 1 + blake2b_64(v) mod (buckets - 1)
    null / missing:                     row = 0

Dense columns must be finite (nulls read as 0); fixed-width vector columns (the meta embedding)
read as zeros for rows that have none yet. The display position (a context column, model.py) is read
when the config names one and the table has it; a table without it (the service's rows: the ranker
decides the order) gives `position=None`, which the model scores as position 1. pyarrow is imported inside the functions, so
`training` imports with torch and numpy alone; serving calls `encode_table` on the rows it scores.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import warnings
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from training.files import read_json
from training.ranker.model import RankerConfig

SPEC_FILE = "spec.json"


_ABSENT_SAID: set[tuple[str, tuple[str, ...]]] = set()  # (file, columns) already warned about (encode_table)


class MissingColumnWarning(UserWarning):
    """A partition lacks a dense column its spec names; the column is read as zeros."""
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class Batch:
    """Model inputs and targets for a set of rows (CPU or device tensors)."""

    sparse: torch.Tensor                   # [B, F] int64 hashed ids
    dense: torch.Tensor                    # [B, D] float32 raw dense ++ vector columns
    bag_values: list[torch.Tensor]         # per bag feature: [N_i] int64 hashed ids
    bag_offsets: list[torch.Tensor]        # per bag feature: [B] int64 start of each row's bag
    label: torch.Tensor                    # [B] float32 in {0, 1}
    weight: torch.Tensor                   # [B] float32
    member_id: torch.Tensor                # [B] int64 raw ids (cold/warm buckets)
    event_id: torch.Tensor | None = None   # [B] int64 when the training set has it (truth join)
    position: torch.Tensor | None = None   # [B] int64 1-based display position (0 = unknown) when read
    # Per bag feature, the most values any rank's shard of the same global batch holds: set by the loader under
    # torchrun, so every rank pads its shard to one shape without asking the others (None: this batch's own).
    shard_bag_values: list[int] | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def inputs(self) -> tuple:
        return (self.sparse, self.dense, self.bag_values, self.bag_offsets, self.position)

    def _mapped(self, fn) -> "Batch":
        """Every tensor through `fn`; the other fields as they are."""
        f = lambda t: None if t is None else fn(t)  # noqa: E731
        return replace(self, sparse=f(self.sparse), dense=f(self.dense), bag_values=[f(v) for v in self.bag_values],
                       bag_offsets=[f(o) for o in self.bag_offsets], label=f(self.label), weight=f(self.weight),
                       member_id=f(self.member_id), event_id=f(self.event_id), position=f(self.position))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._mapped(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._mapped(torch.Tensor.pin_memory)

    def take(self, index: torch.Tensor) -> "Batch":
        """The rows `index` (any order), bags re-packed.

        Row gathers are `index_select` (on the CPU, advanced indexing `t[index]` of a 2-d tensor took about 3x
        as long), and each picked bag's end is read from the next row's offset, so the cost is in the picked
        rows, not in the whole chunk's offsets.
        """
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        values, offsets = [], []
        for bag_values, bag_offsets in zip(self.bag_values, self.bag_offsets):
            starts, picked = _bag_spans(bag_values, bag_offsets, index)
            new_offsets = torch.cumsum(picked, 0) - picked
            within = torch.arange(int(picked.sum())) - torch.repeat_interleave(new_offsets, picked)
            values.append(bag_values.index_select(0, torch.repeat_interleave(starts, picked) + within))
            offsets.append(new_offsets)
        return Batch(pick(self.sparse), pick(self.dense), values, offsets, pick(self.label), pick(self.weight),
                     pick(self.member_id), pick(self.event_id), pick(self.position))


def _bag_spans(bag_values: torch.Tensor, bag_offsets: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the bags of rows `index` start and how many values each holds (a bag ends where the next row's starts)."""
    rows, following = bag_offsets.numel(), index + 1
    starts = bag_offsets.index_select(0, index)
    next_starts = bag_offsets.index_select(0, following.clamp(max=max(rows - 1, 0)))
    return starts, torch.where(following < rows, next_starts, bag_values.numel()) - starts


def concat_batches(batches: list[Batch]) -> Batch:
    """Rows of several batches, in order."""
    if len(batches) == 1:
        return batches[0]
    values, offsets = [], []
    for bag in range(len(batches[0].bag_values)):
        shift, parts_v, parts_o = 0, [], []
        for b in batches:
            parts_v.append(b.bag_values[bag])
            parts_o.append(b.bag_offsets[bag] + shift)
            shift += b.bag_values[bag].numel()
        values.append(torch.cat(parts_v))
        offsets.append(torch.cat(parts_o))
    def joined(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if any(t is None for t in parts) else torch.cat(parts)

    return Batch(
        torch.cat([b.sparse for b in batches]), torch.cat([b.dense for b in batches]), values, offsets,
        torch.cat([b.label for b in batches]), torch.cat([b.weight for b in batches]),
        torch.cat([b.member_id for b in batches]), joined([b.event_id for b in batches]),
        joined([b.position for b in batches]),
    )


# ---------------------------------------------------------------------------------------------
# Hashing


def hash_integers(values: np.ndarray, buckets: int) -> np.ndarray:
    """1 + splitmix64(v) mod (buckets - 1) for int64 values."""
    z = values.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (1 + (z % np.uint64(buckets - 1))).astype(np.int64)


def hash_strings(values: list[str], buckets: int) -> np.ndarray:
    """1 + blake2b_64(v) mod (buckets - 1) for strings (called on distinct values only)."""
    digests = [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") for v in values]
    return (1 + np.array(digests, dtype=np.uint64) % np.uint64(buckets - 1)).astype(np.int64)


def _hash_column(column: Any, buckets: int) -> np.ndarray:
    """Any single-valued Arrow column -> hashed row ids (0 for null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_integer(array.type):
        valid = np.asarray(array.is_valid())
        raw = np.asarray(array.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return np.where(valid, hash_integers(raw, buckets), 0)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = pc.cast(array, pa.string())
    encoded = pc.dictionary_encode(array)
    dictionary_rows = np.concatenate([[0], hash_strings(encoded.dictionary.to_pylist(), buckets)])
    indices = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return dictionary_rows[indices + 1]


def _column(table: Any, name: str, source: str) -> Any:
    if name not in table.column_names:
        raise KeyError(f"{source}: column {name!r} named by the training-set spec is missing "
                       f"(columns: {', '.join(table.column_names)})")
    return table.column(name)


def encode_table(table: Any, spec: dict[str, Any], config: RankerConfig, source: str = "training set",
                 absent_dense_as_zero: bool = False) -> Batch:
    """A pyarrow Table of training-set rows -> a CPU Batch, columns chosen by `config` (from `spec`).

    A missing column raises KeyError naming it, except, with `absent_dense_as_zero` (the training-set
    readers below), a dense or vector column an older partition lacks, read as 0 with a MissingColumnWarning.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = table.num_rows
    sparse = np.stack(
        [_hash_column(_column(table, name, source), buckets) for name, buckets in
         zip(config.sparse_features, config.sparse_buckets)], axis=1,
    ) if rows else np.zeros((0, len(config.sparse_features)), dtype=np.int64)

    bag_values, bag_offsets = [], []
    for name, buckets in zip(config.bag_features, config.bag_buckets):
        lists = _column(table, name, source).combine_chunks()
        lengths = np.asarray(pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        flat = lists.flatten()
        ids = _hash_column(flat, buckets) if len(flat) else np.zeros(0, dtype=np.int64)
        bag_values.append(torch.from_numpy(np.ascontiguousarray(ids)))
        bag_offsets.append(torch.from_numpy(np.cumsum(lengths) - lengths))

    dense_parts = []
    inputs = [*config.dense_features, *(name for name, _ in config.vector_features)]
    absent = [name for name in inputs if name not in table.column_names] if absent_dense_as_zero else []
    if absent and (source, tuple(absent)) not in _ABSENT_SAID:
        # A partition written before a derived column existed (e.g. the first day, built with no feature
        # rows at all, or a day before personalisation wrote any meta embedding): the column reads as 0,
        # exactly as a null value does. Said once per file and process, not silently.
        _ABSENT_SAID.add((source, tuple(absent)))
        warnings.warn(f"{source}: dense column(s) {', '.join(absent)} named by the training-set spec are absent; "
                      f"read as 0", MissingColumnWarning, stacklevel=2)
    for name in config.dense_features:
        if name in absent:
            dense_parts.append(np.zeros((rows, 1), dtype=np.float32))
            continue
        # Null means 'no value yet' (e.g. a rate with no impressions): 0, like the feature jobs' default.
        values = np.asarray(_column(table, name, source).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float32)
        if not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"{source}: dense column {name!r} has a non-finite value {values[bad]} at row {bad}")
        dense_parts.append(values[:, None])
    for name, width in config.vector_features:
        if name in absent:
            dense_parts.append(np.zeros((rows, width), dtype=np.float32))
            continue
        lists = _column(table, name, source).combine_chunks()
        lengths = np.asarray(pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        wrong = np.flatnonzero((lengths != 0) & (lengths != width))
        if wrong.size:
            raise ValueError(f"{source}: vector column {name!r} row {int(wrong[0])} has {int(lengths[wrong[0]])} "
                             f"values, expected {width}")
        matrix = np.zeros((rows, width), dtype=np.float32)
        present = lengths == width
        if present.any():
            matrix[present] = np.asarray(lists.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)
        dense_parts.append(matrix)
    dense = np.concatenate(dense_parts, axis=1) if dense_parts else np.zeros((rows, 0), dtype=np.float32)

    label_name, weight_name = spec.get("label", "label"), spec.get("weight", "weight")
    label = np.asarray(_column(table, label_name, source).to_numpy(zero_copy_only=False), dtype=np.float32)
    if weight_name in table.column_names:
        weight = np.asarray(table.column(weight_name).fill_null(1.0).to_numpy(zero_copy_only=False), dtype=np.float32)
    else:
        weight = np.ones(rows, dtype=np.float32)
    member = np.asarray(_column(table, spec.get("member", "member_id"), source).fill_null(-1).to_numpy(zero_copy_only=False))
    if not np.issubdtype(member.dtype, np.integer):
        member = _hash_column(_column(table, spec["member"], source), 1 << 62)
    event = None
    if "event_id" in table.column_names:
        event = torch.from_numpy(np.array(table.column("event_id").to_numpy(zero_copy_only=False), dtype=np.int64))
    return Batch(
        torch.from_numpy(np.ascontiguousarray(sparse, dtype=np.int64)), torch.from_numpy(np.ascontiguousarray(dense)),
        bag_values, bag_offsets, torch.from_numpy(np.array(label)), torch.from_numpy(np.array(weight)),
        torch.from_numpy(member.astype(np.int64)), event, _positions(table, config.position_feature, source),
    )


def _positions(table: Any, name: str | None, source: str) -> torch.Tensor | None:
    """The 1-based display positions (null -> 0, read as position 1), or None when not named or absent."""
    import pyarrow as pa

    if name is None or name not in table.column_names:
        return None
    column = table.column(name)
    if not pa.types.is_integer(column.type):
        raise ValueError(f"{source}: position column {name!r} must hold integers, found {column.type}")
    return torch.from_numpy(np.array(column.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# The training-set folder


POSITION_COLUMN = "position"


def read_spec(training_set: Path) -> dict[str, Any]:
    """spec.json, with `"position": "position"` added when the newest partition has an integer position column.

    The position is a context column of the events (docs/contracts.md, "Raw zone") that the training set
    passes through but spec.json does not list; the ranker models it apart from the features (position.py).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(training_set) / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: training-set spec not found (build the training set first)")
    spec = read_json(path)
    for key in ("label", "member", "item"):
        if key not in spec:
            raise ValueError(f"{path}: spec has no {key!r} entry (docs/contracts.md, 'Training set')")
    days = available_days(training_set)
    if "position" not in spec and days:
        newest = sorted((Path(training_set) / f"dt={days[-1].isoformat()}").glob("*.parquet"))[0]
        schema = pq.read_schema(newest)
        if POSITION_COLUMN in schema.names and pa.types.is_integer(schema.field(POSITION_COLUMN).type):
            spec["position"] = POSITION_COLUMN
    return spec


def available_days(training_set: Path) -> list[date]:
    """Days with a dt=D partition, in order."""
    days = []
    for folder in Path(training_set).glob("dt=*"):
        if folder.is_dir() and any(folder.glob("*.parquet")):
            days.append(date.fromisoformat(folder.name[3:]))
    return sorted(days)


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of one Parquet file (stop None = to the end), or a pseudo-random part of them.

    With `sample_fraction` f, only the rows whose draw u(row) (held_out_draw) is below f (`held_out`) or
    at or above it (not `held_out`) are taken: the same rows in every process and on every read.
    """

    path: Path
    start: int = 0
    stop: int | None = None
    sample_fraction: float | None = None
    held_out: bool = False

    def mask(self, positions: np.ndarray) -> np.ndarray | None:
        """Which of the file's rows at `positions` belong to this range's sample (None: all of them)."""
        if self.sample_fraction is None:
            return None
        return (held_out_draw(positions) < self.sample_fraction) == self.held_out


def held_out_draw(positions: np.ndarray) -> np.ndarray:
    """u(row) uniform in [0, 1): splitmix64 of the row's position in its file."""
    return (hash_integers(np.asarray(positions, dtype=np.int64), 1 << 31) - 1) / float((1 << 31) - 1)


def _as_range(item: "Path | RowRange") -> RowRange:
    return item if isinstance(item, RowRange) else RowRange(Path(item))


def split_holdout(files: list[Path], fraction: float, newest: int = 1) -> tuple[list["Path | RowRange"], list[RowRange]]:
    """(training rows, held-out rows): the held-out rows are a pseudo-random `fraction` of each of the `newest` files.

    The held-out rows (early stopping, then the calibration fit) should look like the day the model will
    score: a whole day. A draw over the whole day is an unbiased sample of it; the last slice of a day
    need not be (members and jobs that arrive during a day appear only after they arrive), and on the
    demo marketplace the last 20 % of each day had true mean probabilities of 0.072-0.083 against
    0.076-0.079 for the first 80 %. More days give the calibration more rows and average out one day's
    apply-rate noise, at the cost of training on a little less of each of them.
    """
    import pyarrow.parquet as pq

    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    if newest < 1:
        raise ValueError(f"holdout needs at least one file, got newest={newest}")
    newest = min(newest, len(files))
    train: list["Path | RowRange"] = list(files[:-newest])
    holdout: list[RowRange] = []
    for path in map(Path, files[-newest:]):
        rows = pq.ParquetFile(path).metadata.num_rows
        held = int((held_out_draw(np.arange(rows)) < fraction).sum())
        if held == 0 or held == rows:
            raise ValueError(f"{path}: {rows} rows are too few to hold out {fraction:.0%} for calibration")
        train.append(RowRange(path, sample_fraction=fraction, held_out=False))
        holdout.append(RowRange(path, sample_fraction=fraction, held_out=True))
    return train, holdout


def day_files(training_set: Path, days: list[date]) -> list[Path]:
    files = []
    for day in days:
        folder = Path(training_set) / f"dt={day.isoformat()}"
        found = sorted(folder.glob("*.parquet"))
        if not found:
            raise FileNotFoundError(f"{folder}: no training-set partition for {day} (build features for that day)")
        files.extend(found)
    return files


def _read_range(item: "Path | RowRange") -> Any:
    import pyarrow.parquet as pq

    rows = _as_range(item)
    table = pq.read_table(rows.path)
    stop = table.num_rows if rows.stop is None else rows.stop
    table = table.slice(rows.start, stop - rows.start)
    mask = rows.mask(np.arange(rows.start, stop))
    return table if mask is None else table.filter(mask)


def load_rows(files: list["Path | RowRange"], spec: dict[str, Any], config: RankerConfig) -> Batch:
    """Every row of `files` as one CPU Batch (evaluation, calibration)."""
    return concat_batches([encode_table(_read_range(f), spec, config, source=str(_as_range(f).path), absent_dense_as_zero=True) for f in files])


def read_column(files: list[Path], name: str) -> np.ndarray:
    """One column of several files, concatenated (e.g. the member ids seen in training)."""
    import pyarrow.parquet as pq

    if not files:
        return np.zeros(0)
    return np.concatenate([pq.read_table(f, columns=[name]).column(name).to_numpy(zero_copy_only=False) for f in files])


def newest_rows(files: list["Path | RowRange"], spec: dict[str, Any], config: RankerConfig, rows: int) -> Batch:
    """The last `rows` training rows, newest files first (dense statistics; identical on every rank).

    The newest rows are the ones most like the days the model will score: the oldest day of a data
    set can have no features at all (nothing before it), and statistics fitted there would scale
    every later value by 1 / (a near-zero std).
    """
    parts: list[Batch] = []
    have = 0
    for item in reversed(files):
        batch = encode_table(_read_range(item), spec, config, source=str(_as_range(item).path), absent_dense_as_zero=True)
        parts.insert(0, batch)
        have += len(batch)
        if have >= rows:
            break
    sample = concat_batches(parts)
    return sample.take(torch.arange(max(0, len(sample) - rows), len(sample)))


@dataclass(frozen=True)
class StreamConfig:
    """How training rows are streamed: global batch, shuffle buffer, this process's shard."""

    batch_size: int = 1024
    chunk_rows: int = 1 << 18          # rows shuffled together (a file is read in chunks of this many)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    prefetch: int = 2                  # chunks encoded ahead by a background thread
    # Shards gathered (and pinned) ahead by another thread: for GPU training, where the main thread mostly
    # waits; on the CPU it competes with the step (demo ranker on 2 cores: 29.6 s against 20.3 s without).
    batches_ahead: int = 0
    gather_threads: int = 1            # with batches_ahead: threads gathering shards at once, in order
    pin_memory: bool = False


def _chunks(files: list["Path | RowRange"], spec: dict[str, Any], config: RankerConfig, stream: StreamConfig) -> Iterator[Batch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for item in files:
        rows = _as_range(item)
        position = 0
        for record_batch in pq.ParquetFile(rows.path).iter_batches(batch_size=stream.chunk_rows):
            begin, end = position, position + record_batch.num_rows
            position = end
            lo, hi = max(begin, rows.start), end if rows.stop is None else min(end, rows.stop)
            if hi <= lo:
                continue
            table = pa.Table.from_batches([record_batch.slice(lo - begin, hi - lo)])
            mask = rows.mask(np.arange(lo, hi))
            if mask is not None:
                table = table.filter(mask)
            yield encode_table(table, spec, config, source=str(rows.path), absent_dense_as_zero=True)


def _shuffle_buffers(chunks: Iterator[Batch], rows: int) -> Iterator[Batch]:
    """Consecutive chunks joined until each holds at least `rows` rows (the last may hold fewer).

    A day's file is one chunk; without joining, rows would only be shuffled within their day and every
    epoch would walk the days in order.
    """
    pending: list[Batch] = []
    have = 0
    for chunk in chunks:
        pending.append(chunk)
        have += len(chunk)
        if have >= rows:
            yield concat_batches(pending)
            pending, have = [], 0
    if pending:
        yield concat_batches(pending)


def _prefetched(source: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run `source` in a background thread (Parquet decode and hashing release the GIL)."""
    if depth <= 0:
        yield from source
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for item in source:
                slots.put(item)
        except BaseException as error:  # re-raised in the consumer
            slots.put(error)
        slots.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := slots.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


@dataclass
class ChunkCache:
    """The encoded shuffle buffers of one epoch, kept for the next ones when they hold at most `max_rows`.

    The first epoch reads and encodes the Parquet files as always and fills the cache on the way; later
    epochs shuffle the same buffers in memory instead of decoding and hashing every row again (the same
    batches: the buffers do not depend on the epoch, only their permutations do). Past `max_rows` the
    cache empties itself and every epoch streams from the files.
    """

    max_rows: int
    chunks: list[Batch] = field(default_factory=list)
    rows: int = 0
    complete: bool = False
    overflowed: bool = False

    def filling(self, source: Iterator[Batch]) -> Iterator[Batch]:
        for chunk in source:
            if not self.overflowed:
                self.chunks.append(chunk)
                self.rows += len(chunk)
                if self.rows > self.max_rows:
                    self.overflowed, self.chunks, self.rows = True, [], 0
            yield chunk
        self.complete = not self.overflowed


def stream_batches(
    files: list["Path | RowRange"], spec: dict[str, Any], config: RankerConfig, stream: StreamConfig, epoch: int = 0,
    cache: ChunkCache | None = None,
) -> Iterator[Batch]:
    """Shuffled global batches of `stream.batch_size` rows, of which this rank gets rows rank::world_size.

    Deterministic in (seed, epoch): every process draws the same permutation, so the union of the
    ranks' shards is exactly the single-process batch (same loss curve under torchrun). Pass the same
    `cache` to every epoch's call to encode the files once when they fit in it.
    """
    if cache is not None and cache.complete:
        chunks: Iterator[Batch] = iter(cache.chunks)
    else:
        chunks = _prefetched(_shuffle_buffers(_chunks(files, spec, config, stream), stream.chunk_rows), stream.prefetch)
        if cache is not None and not cache.overflowed:
            chunks = cache.filling(chunks)
    # With batches_ahead, the row gathers run beside the training step (torch releases the GIL).
    shards = _shard_rows(chunks, stream, epoch)
    if stream.batches_ahead > 0 and stream.gather_threads > 1:
        yield from _gathered_in_parallel(shards, stream)
    else:
        yield from _prefetched((_gather(*shard, stream.pin_memory) for shard in shards), stream.batches_ahead)


Shard = tuple[Batch, torch.Tensor, "list[int] | None"]


def _shard_rows(chunks: Iterator[Batch], stream: StreamConfig, epoch: int) -> Iterator[Shard]:
    """(chunk, this rank's rows of the next batch, the most bag values of any rank's rows), batch after batch."""
    generator = torch.Generator().manual_seed(stream.seed * 1_000_003 + epoch)
    for chunk in chunks:
        order = torch.randperm(len(chunk), generator=generator)
        for start in range(0, len(order), stream.batch_size):
            rows = order[start:start + stream.batch_size]
            if len(rows) < stream.world_size:
                continue  # every rank must see a non-empty shard, or collectives would hang
            most = None
            if stream.world_size > 1:  # every rank draws the same rows, so each counts every shard's bag values
                most = []
                for bag_values, bag_offsets in zip(chunk.bag_values, chunk.bag_offsets):
                    lengths = _bag_spans(bag_values, bag_offsets, rows)[1]
                    most.append(max(int(lengths[rank::stream.world_size].sum()) for rank in range(stream.world_size)))
            yield chunk, rows[stream.rank::stream.world_size], most


def _gather(chunk: Batch, rows: torch.Tensor, most_bag_values: list[int] | None, pin_memory: bool) -> Batch:
    shard = chunk.take(rows)
    shard.shard_bag_values = most_bag_values
    return shard.pin_memory() if pin_memory else shard


def _gathered_in_parallel(shards: Iterator[Shard], stream: StreamConfig) -> Iterator[Batch]:
    """The shards gathered by `stream.gather_threads` threads, up to `stream.batches_ahead` ahead, in order."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(stream.gather_threads, thread_name_prefix="rankflow-gather") as pool:
        pending: deque = deque()
        for shard in shards:
            pending.append(pool.submit(_gather, *shard, stream.pin_memory))
            if len(pending) > stream.batches_ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
