"""End to end on a real scheduler and PostgreSQL: schedule, Assets, REST backfill, idempotent re-run,
a bad day that fails at validation, and a screenshot of the grid view.

The tests share one Airflow (module fixture) and run in file order; each waits for the state the
previous one left. The data is the smallest marketplace that still has every table (150 members,
60 jobs, 1,000 impressions a day) and lives under /tmp/rankflow-e2e-*, outside pytest's basetemp, so a
failure's task logs can be printed before the directory is removed. Any failed task's log is put
into the assertion message. Each features day is ~2-3 minutes of Spark on a loaded 2-core box, so the
file takes ~20 minutes there; the waits are bounded accordingly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.conftest import generate_tiny
from tests.dags.conftest import STAGE_FUNCTIONS

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FIRST = date(2026, 1, 1)
DAYS = [FIRST + timedelta(days=i) for i in range(6)]  # 1: scheduled, 2-4: backfill, 5: bad, 6: good
E2E_DATA = {"members": 150, "jobs": 60, "days": len(DAYS), "impressions_per_day": 1_000}
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
CHROMIUM = Path("/usr/bin/chromium")
LOG_TAIL_CHARS = 6_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AirflowREST:
    """The few /api/v2 calls the test needs (all-admins mode: no token required)."""

    def __init__(self, url: str):
        import httpx

        self.http = httpx.Client(base_url=f"{url}/api/v2", timeout=30)

    def runs(self, dag_id: str) -> list[dict]:
        response = self.http.get(f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "logical_date"})
        if response.status_code == 404:  # the dag-processor has not parsed the DAG yet
            return []
        response.raise_for_status()
        return response.json()["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        response = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        response.raise_for_status()
        return response.json()["task_instances"]

    def backfill(self, dag_id: str, first: date, last: date, reprocess: str = "none") -> dict:
        body = {"dag_id": dag_id, "from_date": f"{first}T00:00:00Z", "to_date": f"{last}T00:00:00Z",
                "max_active_runs": 1, "reprocess_behavior": reprocess}
        # The scheduler marks a finished backfill completed a little after its last run ends: until then a
        # new backfill of the same DAG is refused, so wait (bounded) for the previous one to close.
        deadline = time.monotonic() + 300
        response = self.http.post("/backfills", json=body)
        while "already a running backfill" in response.text and time.monotonic() < deadline:
            time.sleep(5)
            response = self.http.post("/backfills", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        response = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        return response.json().get("value") if response.status_code == 200 else None

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int = 1) -> str:
        """The task log as text: one line per event, exceptions (error_detail) included."""
        response = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{attempt}",
                                 params={"full_content": True}, headers={"Accept": "application/json"})
        response.raise_for_status()
        lines = []
        for message in response.json()["content"]:
            if isinstance(message, str):
                lines.append(message)
                continue
            lines.append(str(message.get("event", "")))
            if message.get("error_detail"):
                lines.append(json.dumps(message["error_detail"], indent=1, default=str))
        return "\n".join(lines)

    def failures(self, dag_ids=("features", "personalisation", "ranker", "publish"), skip_days=()) -> str:
        """Every failed (or retrying) task instance with the tail of its log; '' when there is none."""
        reports = []
        for dag_id in dag_ids:
            for run in self.runs(dag_id):
                if run.get("data_interval_start") and run_day(run) in skip_days:
                    continue
                for ti in self.task_instances(dag_id, run["dag_run_id"]):
                    if ti["state"] not in ("failed", "up_for_retry"):  # upstream_failed: its cause is listed
                        continue
                    log = self.task_log(dag_id, run["dag_run_id"], ti["task_id"], max(ti["try_number"], 1))
                    reports.append(f"--- {dag_id} / {run['dag_run_id']} / {ti['task_id']} "
                                   f"(try {ti['try_number']}, {ti['state']}):\n{log[-LOG_TAIL_CHARS:]}")
        return "\n".join(reports)


def wait_for(condition, what: str, timeout_s: float, api: AirflowREST | None = None, poll_s: float = 3.0,
             expected_failures=()):
    """Poll `condition` until truthy; fail at once (with the failed task's log) if a task fails.

    `expected_failures`: days whose failures are part of the test (the bad raw day).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        failed = api.failures(skip_days=expected_failures) if api is not None else ""
        if failed:
            raise AssertionError(f"a task failed while waiting for {what}:\n{failed}")
        if time.monotonic() > deadline:
            where = "" if api is None else "; runs now: " + "; ".join(
                f"{dag}: " + ", ".join(f"{run['data_interval_start'] and run_day(run)} {run['state']}"
                                       for run in api.runs(dag)) for dag in ("features", "personalisation"))
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{where}")
        time.sleep(poll_s)


def run_day(run: dict) -> date:
    return date.fromisoformat(run["data_interval_start"][:10])


def features_states(api: AirflowREST) -> dict[date, str]:
    return {run_day(run): run["state"] for run in api.runs("features")}


def personalised_days(api: AirflowREST) -> dict[date, str]:
    """Day -> state of the newest personalisation run that processed it (from resolve_days' XCom)."""
    days = {}
    for run in api.runs("personalisation"):
        for day in api.xcom("personalisation", run["dag_run_id"], "resolve_days") or []:
            days[date.fromisoformat(day)] = run["state"]
    return days


def idle(api: AirflowREST, dag_id: str) -> bool:
    return all(run["state"] in ("success", "failed") for run in api.runs(dag_id))


def day_digests(data_dir: Path, day: date) -> dict[str, str]:
    """sha256 of every file a day writes: feature-zone partitions dt=D and the GLMix state models/glmix/dt=D."""
    paths = [*(data_dir / "features").glob(f"*/dt={day}/**/*"), *(data_dir / "models" / "glmix").glob(f"dt={day}/*")]
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths)
            if p.is_file()}


def explain_difference(data_dir: Path, before: dict[str, str], after: dict[str, str]) -> str:
    """Which files differ and, for Parquet files, which columns (or the metadata) differ."""
    import pyarrow.parquet as pq

    lines = [f"files only before: {sorted(set(before) - set(after))}",
             f"files only after: {sorted(set(after) - set(before))}"]
    for name in sorted(k for k in set(before) & set(after) if before[k] != after[k]):
        detail = ""
        if name.endswith(".parquet"):
            table = pq.read_table(data_dir / name)
            detail = f" columns {table.column_names}; created_ts sample " + (
                str(table.column("created_ts")[0]) if "created_ts" in table.column_names else "-")
        lines.append(f"changed: {name}{detail}")
    return "\n".join(lines)


def model_labels(data_dir: Path) -> list[dict]:
    """Labels of every model in the data dir's BentoML store (a subprocess: BENTOML_HOME is read at import)."""
    script = ("import bentoml, json; print(json.dumps([{'tag': str(m.tag), **m.info.labels} "
              "for m in bentoml.models.list()]))")
    env = {**os.environ, "BENTOML_HOME": str(data_dir / "models" / "bentoml")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _drop_database(name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{POSTGRES}/postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        connection.close()


@pytest.fixture(scope="module")
def airflow():
    """Airflow on a fresh PostgreSQL database, scheduling day 1 only; stopped, dropped and removed afterwards."""
    for area in STAGE_FUNCTIONS:
        pytest.importorskip(f"rankflow.stages.{area}", reason=f"rankflow.stages.{area} has not landed yet")
    from rankflow.airflow_local import AirflowOptions, start, stop

    root = Path(tempfile.mkdtemp(prefix="rankflow-e2e-", dir="/tmp"))
    data_dir = root / "data"
    database = f"rankflow_e2e_{os.getpid()}"
    try:
        generate_tiny(data_dir, **E2E_DATA)
        # Meta-training is kept out of this flow (meta_min_history_days past the data): it reads a window
        # of training-set days including day 1, whose partition has a different schema (first-day
        # j_skills all null -> x_affinity_skills instead of _mean/_max), and fails with ArrowInvalid; the
        # dag.test runs and the stage tests cover it. Reported to the features and meta owners.
        options = AirflowOptions(data_dir=data_dir, db_url=f"{POSTGRES}/{database}", port=_free_port(),
                                 end_date=FIRST, open_access=True, retries=0, meta_min_history_days=len(DAYS))
        info = start(options)
        yield {"data_dir": data_dir, "url": info.url, "api": AirflowREST(info.url), "options": options}
    finally:
        print(f"stopped {stop(data_dir)}")
        _drop_database(database)
        shutil.rmtree(root, ignore_errors=True)


def test_scheduled_first_day_triggers_personalisation_through_the_asset(airflow):
    api = airflow["api"]
    wait_for(lambda: features_states(api).get(FIRST) == "success", "scheduled features run of day 1", 420, api)
    wait_for(lambda: personalised_days(api).get(FIRST) == "success", "personalisation of day 1", 300, api)
    assert [run["run_type"] for run in api.runs("features")] == ["scheduled"]
    assert [run["run_type"] for run in api.runs("personalisation")] == ["asset_triggered"]


def test_rest_backfill_of_three_days_succeeds_and_fills_the_stores(airflow):
    api, data_dir = airflow["api"], airflow["data_dir"]
    backfill = api.backfill("features", DAYS[1], DAYS[3])
    assert backfill["dag_id"] == "features"
    wait_for(lambda: all(features_states(api).get(d) == "success" for d in DAYS[:4]), "backfilled days", 900, api)
    wait_for(lambda: all(personalised_days(api).get(d) == "success" for d in DAYS[:4]) and idle(api, "personalisation"),
             "personalisation of the backfilled days", 420, api)
    assert {run["run_type"] for run in api.runs("features")} == {"scheduled", "backfill"}
    for day in DAYS[:4]:
        for table in ("training_set", "glmix_member", "glmix_job"):
            assert (data_dir / "features" / table / f"dt={day}").is_dir(), f"offline {table} {day}"
        assert (data_dir / "models" / "glmix" / f"dt={day}" / "meta.json").is_file(), f"glmix state {day}"
    glmix_days = {m.get("logical_date") for m in model_labels(data_dir) if m["tag"].startswith("rankflow-glmix")}
    assert {d.isoformat() for d in DAYS[:4]} <= glmix_days
    online = data_dir / "feast"
    assert online.is_dir() and any(p.is_file() for p in online.rglob("*")), "the online store is empty"


def test_rerunning_a_backfilled_day_gives_byte_identical_outputs(airflow):
    api, data_dir = airflow["api"], airflow["data_dir"]
    day = DAYS[2]
    before = day_digests(data_dir, day)
    assert len(before) >= 5, f"too few files for {day}: {before}"
    inodes = {name: (data_dir / name).stat().st_ino for name in before}
    personalisations = len(api.runs("personalisation"))
    api.backfill("features", day, day, reprocess="completed")
    wait_for(lambda: len(api.runs("personalisation")) > personalisations and idle(api, "personalisation")
             and idle(api, "features"), "the re-run and its personalisation", 600, api)
    assert features_states(api)[day] == "success"
    after = day_digests(data_dir, day)
    assert after == before, explain_difference(data_dir, before, after)
    # Rewritten, not skipped: every partition is swapped in as a new file (atomic_directory / atomic_write_bytes).
    kept = sorted(name for name in after if (data_dir / name).stat().st_ino == inodes[name])
    assert not kept, f"files the re-run did not rewrite: {kept}"


def test_a_bad_raw_day_fails_at_validation_and_the_next_day_waits_for_its_repair(airflow):
    import pyarrow.parquet as pq

    api, data_dir = airflow["api"], airflow["data_dir"]
    bad, good = DAYS[4], DAYS[5]
    events_file = data_dir / "raw" / "events" / f"dt={bad}" / "part-0.parquet"
    original = events_file.read_bytes()
    events = pq.read_table(events_file).to_pandas()
    events.loc[events.index[:5], "label"] = 3  # labels must be 0/1
    events.to_parquet(events_file, index=False)

    api.backfill("features", bad, good)
    wait_for(lambda: features_states(api).get(bad) == "failed" and features_states(api).get(good) == "failed",
             "the bad day to fail, and the next one to refuse to build without it", 600, api,
             expected_failures=(bad, good))
    runs = {run_day(run): run["dag_run_id"] for run in api.runs("features")}
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances("features", runs[bad])}
    assert states == {"validate_raw": "failed", "build_features": "upstream_failed",
                      "materialize": "upstream_failed"}, states
    log = api.task_log("features", runs[bad], "validate_raw")
    assert "validation failed" in log and "reports/validation/raw_events" in log, log[-LOG_TAIL_CHARS:]
    # The next day's windows would leave the quarantined day out: it fails at once (no retry), saying why.
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances("features", runs[good])}
    assert states == {"validate_raw": "success", "build_features": "failed",
                      "materialize": "upstream_failed"}, states
    log = api.task_log("features", runs[good], "build_features")
    assert f"raw events of {bad} are in quarantine" in log and "not retrying" in log, log[-LOG_TAIL_CHARS:]
    assert bad not in personalised_days(api) and good not in personalised_days(api)
    assert not (data_dir / "features" / "member_features" / f"dt={good}").exists()

    # The operator's repair: the fixed events back in the raw zone, then the failed days re-run.
    events_file.parent.mkdir(parents=True, exist_ok=True)
    events_file.write_bytes(original)
    api.backfill("features", bad, good, reprocess="failed")
    wait_for(lambda: features_states(api).get(bad) == "success" and features_states(api).get(good) == "success",
             "both days to build after the repair", 600, api, expected_failures=(bad, good))
    wait_for(lambda: personalised_days(api).get(good) == "success" and idle(api, "personalisation"),
             "personalisation of both days", 600, api, expected_failures=(bad, good))
    assert (data_dir / "features" / "glmix_member" / f"dt={bad}").is_dir()
    assert (data_dir / "features" / "glmix_member" / f"dt={good}").is_dir()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="run scripts/ensure_chromium.sh to install Chromium")
def test_grid_view_screenshot_shows_the_runs(airflow, tmp_path):
    data_dir, url = airflow["data_dir"], airflow["url"]
    target = data_dir / "reports" / "airflow-grid.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    take_screenshot(f"{url}/auth/token/login?next={url}/dags/features", target, tmp_path / "chromium")
    assert target.stat().st_size > 20_000  # a rendered grid, not a blank page
    # The data dir is removed with the fixture; keep a copy where pytest keeps test files.
    shutil.copy(target, tmp_path / target.name)


def take_screenshot(url: str, target: Path, profile: Path) -> None:
    """Headless Chromium, isolated profile, no network beyond the local UI."""
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000",
               "--hide-scrollbars", f"--screenshot={target}", url]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
