"""Run one expectation suite on one pandas frame as a Great Expectations checkpoint, and keep the result.

Every suite in rankflow goes through `run_suite`:

1. rules GX cannot state on a raw column (an id is known, every element of a vector is finite) are
   computed in pandas as boolean *flag columns* named `<column>:<rule>` and checked with
   `expect_column_values_to_be_in_set([True])`, so they appear in the report like any expectation;
2. the suite, its ValidationDefinition and a Checkpoint are saved into a file-backed GX context at
   `reports/validation/gx/` and run on the frame in-process, and the result's Data Docs page (and its
   suite's) is rendered;
3. the result is written atomically to `reports/validation/<suite>/dt=D/result.json` (re-validating a
   day replaces it; GX's own store and Data Docs page for that day are replaced too, because the run
   id is the logical day, not the wall clock);
4. the Data Docs index gets a static list of every kept result (`offline_index`: GX's own list needs
   CDN scripts), and a failure raises `ValidationFailed` with a readable summary.

GX's own index page is built with the first result, and rebuilt by `refresh_data_docs_index` once a day (at
the end of the day's feature build: rankflow.stages.features), not after every result as GX's
`UpdateDataDocsAction` does: that reads back every stored result, so each validation cost more than the
one before, without bound (measured warm: 0.13 s more per validation at the demo's 77 results by day 10,
about 1.7 ms a stored result: some 5 s per validation, 8 a day, after a year of days). The static list is
refreshed after every result.

GX is imported once per process (2.7 s on an idle 2-core machine, ~10 s under heavy load) and the
context is cached per reports directory (opening it costs ~0.15 s); a run on a 200k-row day then
takes about 1-3 s, most of it GX's per-expectation overhead and the Data Docs page. A file lock
serialises runs that share a reports directory, so parallel Airflow tasks cannot interleave their
suite definitions.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import unquote

import numpy as np
import pandas as pd

from rankflow.logs import configure_logging, get_logger
from rankflow.paths import atomic_write_bytes, dt_partition
from validation.offline_index import data_docs_index, write_offline_index
from validation.result import ValidationFailed, ValidationResult
from validation.summary import describe_failure

log = get_logger(__name__)

DATASOURCE = "rankflow"
SITE = "rankflow"
# Relative to the GX root (reports/validation/gx): the site lands in reports/data_docs.
SITE_DIRECTORY = "../../data_docs/"
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
SEQUENCE_TYPES = (list, tuple, np.ndarray)  # what a vector / multi-valued cell holds once read into pandas


@dataclass(frozen=True)
class Flag:
    """A per-row rule computed in pandas: `passed` is True where the row's `source` value obeys it."""

    source: str
    rule: str
    passed: pd.Series

    @property
    def column(self) -> str:
        return f"{self.source}:{self.rule}"


def gx_modules():
    """Import Great Expectations quietly, only when a suite actually runs (keeps `import validation` cheap)."""
    configure_logging()
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx
    import great_expectations.expectations as gxe

    _share_compiled_templates()
    return gx, gxe


@functools.cache
def _compiled_templates():
    """A process-wide jinja2 bytecode cache for Data Docs.

    Every Data Docs view GX creates builds its own jinja2 Environment, so each page rendered compiled its
    templates again: 36 compiles per suite run, a quarter of a warm run's time (cProfile, member_features).
    With this cache each template compiles once per process; later Environments load its code.
    """
    from jinja2 import BytecodeCache

    class InMemory(BytecodeCache):
        def __init__(self) -> None:
            self.code: dict[str, bytes] = {}

        def load_bytecode(self, bucket) -> None:
            if bucket.key in self.code:
                bucket.bytecode_from_string(self.code[bucket.key])

        def dump_bytecode(self, bucket) -> None:
            self.code[bucket.key] = bucket.bytecode_to_string()

    return InMemory()


def _share_compiled_templates() -> None:
    """Give every Data Docs view's jinja2 Environment the process's bytecode cache (once per process)."""
    from great_expectations.render.view.view import DefaultJinjaView

    if getattr(DefaultJinjaView.__init__, "_rankflow_shared", False):
        return
    original = DefaultJinjaView.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self.env.bytecode_cache = _compiled_templates()

    init._rankflow_shared = True
    DefaultJinjaView.__init__ = init


def suite_dir(reports_dir: Path, suite: str, day: date) -> Path:
    """Where one suite's result for one day is kept."""
    return Path(reports_dir) / "validation" / suite / dt_partition(day)


_contexts: dict[Path, Any] = {}
_contexts_guard = threading.Lock()


def gx_context(reports_dir: Path):
    """The process-wide file-backed GX context of a reports directory, configured for rankflow."""
    root = Path(reports_dir).resolve()
    with _contexts_guard:
        if root not in _contexts:
            _contexts[root] = _open_context(root)
        return _contexts[root]


def _open_context(root: Path):
    gx, _ = gx_modules()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    (root / "validation").mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=root / "validation")
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": SITE_DIRECTORY},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    changed = False
    # Only our site: GX's default one would render a second copy under uncommitted/.
    if (context.variables.data_docs_sites or {}) != {SITE: site}:
        context.variables.data_docs_sites = {SITE: site}
        changed = True
    bars = context.variables.progress_bars
    if not bars or bars.get("globally", True):
        # tqdm bars per metric batch flood task logs.
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        changed = True
    if changed:
        context.variables.save()
    return context


@contextmanager
def _reports_lock(reports_dir: Path) -> Iterator[None]:
    """Serialise suite runs across processes sharing one reports directory."""
    lock_path = Path(reports_dir) / "validation" / ".lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _batch_definition(context, suite: str):
    """A whole-dataframe batch definition per suite (the frame itself is passed at run time)."""
    try:
        source = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(suite)
    except LookupError:
        asset = source.add_dataframe_asset(suite)
    try:
        return asset.get_batch_definition(suite)
    except (KeyError, LookupError):
        return asset.add_batch_definition_whole_dataframe(suite)


def _replace_suite(context, suite):
    """Store `suite` in place of any earlier suite of that name.

    Not `suites.add_or_update`: it matches every new expectation against every stored one to keep ids
    stable, O(n^2) deep comparisons (2.6 s under cProfile for a 61-expectation feature table); our suites are rebuilt
    for each day, so stable ids buy nothing.
    """
    from great_expectations.exceptions import DataContextError

    try:
        context.suites.delete(suite.name)
    except DataContextError:
        pass  # first run of this suite
    return context.suites.add(suite)


def _replace(factory, resource):
    """Store a validation definition or checkpoint over any earlier one of its name (keeping its id).

    Not GX's `add_or_update`: a checkpoint's re-adds its validation definitions, and each of those re-adds
    its suite with the expectation matching `_replace_suite` avoids and saves its data source again, while
    `run_suite` has just stored the suite and the batch definition itself.
    """
    from great_expectations.exceptions import DataContextError

    try:
        existing = factory.get(name=resource.name)
    except DataContextError:
        return factory.add(resource)
    resource.id = existing.id
    resource.save()
    return resource


# Expectations that read no column, only the row count: a frame narrowed to the columns read keeps their answer.
_ROW_COUNT_ONLY = ("ExpectTableRowCountToBeBetween", "ExpectTableRowCountToEqual")


def _columns_read(expectations: Sequence[Any]) -> set[str] | None:
    """The columns the expectations read, or None when one of them reads the table as a whole (its column
    list, say), which a narrowed frame would change."""
    columns: set[str] = set()
    for expectation in expectations:
        if getattr(expectation, "row_condition", None):  # a condition may read any column
            return None
        if type(expectation).__name__ in _ROW_COUNT_ONLY:
            continue
        column, column_list = getattr(expectation, "column", None), getattr(expectation, "column_list", None)
        if column is not None:
            columns.add(column)
        elif column_list:
            columns.update(column_list)
        else:
            return None
    return columns


def _first_value(values: pd.Series):
    first = values.first_valid_index()
    return None if first is None else values.at[first]


def _gx_view(frame: pd.DataFrame, flags: Sequence[Flag], expectations: Sequence[Any] = ()) -> pd.DataFrame:
    """The frame GX validates: the data plus the flag columns, with vector columns replaced by their lengths,
    and only the columns the expectations read when each reads its own columns (or the row count).

    GX fingerprints every batch with `pd.util.hash_pandas_object`; a column of arrays is unhashable,
    so it falls back to pickling the whole frame (6 s for 200k rows x 64 floats). Every rule about
    a vector's contents is a flag column, so GX needs from a vector column only its name and where it
    is null, and the length (NaN where null) keeps both.

    GX's pandas engine copies the whole frame for each column expectation (the rows where the column is not
    null); the columns that no expectation reads (a training set's dense values, whose rules are flag columns)
    were 2M rows x 40 floats copied 46 times, most of its 13 s. The view is built as one consolidated frame
    (columns assigned one by one left pandas to consolidate them again on every copy).
    """
    read = _columns_read(expectations)
    kept = [column for column in frame.columns if read is None or column in read]
    vectors = [column for column in kept if frame[column].dtype == object
               and isinstance(_first_value(frame[column]), SEQUENCE_TYPES)]
    if len(kept) == len(frame.columns) and not vectors and not flags:
        return frame  # nothing to narrow, replace or add
    columns = {}
    for column in kept:
        values = frame[column]
        if column in vectors:
            values = pd.Series([len(value) if isinstance(value, SEQUENCE_TYPES) else np.nan for value in values])
        columns[column] = values.array  # arrays, not Series: nothing to align, the dtype kept
    columns.update({flag.column: flag.passed.to_numpy() for flag in flags})
    return pd.DataFrame(columns, index=frame.index)


def run_suite(
    suite: str,
    day: date,
    frame: pd.DataFrame,
    expectations: Sequence[Any],
    *,
    reports_dir: Path,
    flags: Sequence[Flag] = (),
    raise_on_failure: bool = True,
) -> ValidationResult:
    """Validate `frame` (plus its flag columns) against `expectations`; keep and return the result."""
    started = time.perf_counter()
    gx, _ = gx_modules()
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    validated = _gx_view(frame, flags, expectations)
    run_id = gx.RunIdentifier(run_name=dt_partition(day),
                              run_time=datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
    with _reports_lock(reports_dir):
        context = gx_context(reports_dir)
        expectation_suite = _replace_suite(context, gx.ExpectationSuite(name=suite, expectations=list(expectations)))
        definition = _replace(context.validation_definitions, gx.ValidationDefinition(
            name=suite, data=_batch_definition(context, suite), suite=expectation_suite))
        checkpoint = _replace(context.checkpoints, gx.Checkpoint(
            name=suite, validation_definitions=[definition], result_format=RESULT_FORMAT, actions=[]))
        outcome = checkpoint.run(batch_parameters={"dataframe": validated}, run_id=run_id)
        ((result_key, suite_result),) = outcome.run_results.items()
        # This result's page and its suite's; the index only when there is none yet (module doc).
        context.build_data_docs(site_names=[SITE], resource_identifiers=[result_key, ExpectationSuiteIdentifier(name=suite)],
                                build_index=not data_docs_index(reports_dir).exists())
        urls = context.get_docs_sites_urls(resource_identifier=result_key, site_name=SITE, only_if_exists=False)

    by_column = {flag.column: flag for flag in flags}
    failures = [describe_failure(item, frame, by_column) for item in suite_result.results if not item.success]
    statistics = dict(suite_result.statistics)
    statistics.update(rows=int(len(frame)), seconds=round(time.perf_counter() - started, 3))
    page = _url_to_path(urls[0]["site_url"]) if urls and urls[0].get("site_url") else None

    report_path = suite_dir(reports_dir, suite, day) / "result.json"
    result = ValidationResult(success=bool(suite_result.success), suite=suite, day=day, statistics=statistics,
                              failures=failures, report_path=report_path, data_docs_page=page)
    payload = {**result.to_dict(), "gx_result": suite_result.to_json_dict()}
    with _reports_lock(reports_dir):
        atomic_write_bytes(report_path, json.dumps(payload, indent=1, default=str).encode())
        write_offline_index(reports_dir)
    if result.success:
        log.info("validation %s %s passed (%d rows, %.2fs)", suite, day, len(frame), statistics["seconds"])
    else:
        log.warning("%s", result.summary)
        if raise_on_failure:
            raise ValidationFailed(result)
    return result


def _url_to_path(url: str) -> Path:
    """GX returns file:// URLs with the path quoted (dt=D becomes dt%3DD) and '..' left in."""
    return Path(unquote(url.removeprefix("file://"))).resolve()


def refresh_data_docs_index(reports_dir: Path) -> None:
    """Rebuild GX's Data Docs index page alone (plus the newest result's page: GX builds every page when it is
    given none); the static list of results is refreshed with it."""
    with _reports_lock(reports_dir):
        context = gx_context(reports_dir)
        keys = context.validation_results_store.list_keys()
        if keys:
            newest = max(keys, key=lambda key: key.run_id.run_time)
            context.build_data_docs(site_names=[SITE], resource_identifiers=[newest], build_index=True)
            write_offline_index(reports_dir)


def build_data_docs(reports_dir: Path) -> Path:
    """(Re)build the GX Data Docs site into `reports_dir/data_docs` and return its `index.html`."""
    with _reports_lock(reports_dir):
        context = gx_context(reports_dir)
        context.build_data_docs(site_names=[SITE])
        write_offline_index(reports_dir)
    index = data_docs_index(reports_dir)
    if not index.exists():
        raise FileNotFoundError(f"GX built Data Docs but {index} is missing")
    return index
