"""End to end on a real scheduler and PostgreSQL: schedule, Assets, REST backfill, idempotent re-run,
a bad day that fails at validation, and a screenshot of the grid view.

The tests share one Airflow (module fixture) and run in file order; each waits for the state the
previous one left. About 6-8 minutes on 2 cores, most of it Spark inside the tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.conftest import generate_tiny
from tests.dags.conftest import STAGE_FUNCTIONS

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FIRST = date(2026, 1, 1)
DAYS = [FIRST + timedelta(days=i) for i in range(6)]  # 1: scheduled, 2-4: backfill, 5: bad, 6: good
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
CHROMIUM = Path("/usr/bin/chromium")


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

    def backfill(self, dag_id: str, first: date, last: date, reprocess: str = "none") -> dict:
        body = {"dag_id": dag_id, "from_date": f"{first}T00:00:00Z", "to_date": f"{last}T00:00:00Z",
                "max_active_runs": 1, "reprocess_behavior": reprocess}
        response = self.http.post("/backfills", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def trigger(self, dag_id: str, conf: dict) -> dict:
        response = self.http.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        response = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        return response.json().get("value") if response.status_code == 200 else None

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int = 1) -> str:
        response = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{attempt}",
                                 params={"full_content": True}, headers={"Accept": "application/json"})
        response.raise_for_status()
        return json.dumps(response.json())


def wait_for(condition, what: str, timeout_s: float, poll_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run_day(run: dict) -> date:
    return date.fromisoformat(run["data_interval_start"][:10])


def features_states(api: AirflowREST) -> dict[date, str]:
    return {run_day(run): run["state"] for run in api.runs("features")}


def personalised_days(api: AirflowREST) -> dict[date, str]:
    """Day -> state of the personalisation run(s) that processed it (from resolve_days' XCom)."""
    days = {}
    for run in api.runs("personalisation"):
        for day in api.xcom("personalisation", run["dag_run_id"], "resolve_days") or []:
            days[date.fromisoformat(day)] = run["state"]
    return days


def idle(api: AirflowREST, dag_id: str) -> bool:
    return all(run["state"] in ("success", "failed") for run in api.runs(dag_id))


def partition_digests(data_dir: Path, day: date) -> dict[str, str]:
    """sha256 of every file of every dt=D partition under features/ (Spark and personalisation output)."""
    digests = {}
    for path in sorted((data_dir / "features").glob(f"*/dt={day}/**/*")):
        if path.is_file():
            digests[str(path.relative_to(data_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def model_labels(data_dir: Path) -> list[dict]:
    """Labels of every model in the BentoML store (in a subprocess: BENTOML_HOME is read at import)."""
    script = ("import bentoml, json; print(json.dumps([{'tag': str(m.tag), **m.info.labels} "
              "for m in bentoml.models.list()]))")
    env = {**os.environ, "BENTOML_HOME": str(data_dir / "models" / "bentoml")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Airflow on a fresh PostgreSQL database, scheduling day 1 only; stopped and dropped afterwards."""
    for area in STAGE_FUNCTIONS:
        pytest.importorskip(f"rankflow.stages.{area}", reason=f"rankflow.stages.{area} has not landed yet")
    from rankflow.airflow_local import AirflowOptions, start, stop

    data_dir = generate_tiny(tmp_path_factory.mktemp("e2e") / "data", days=len(DAYS))
    database = f"rankflow_e2e_{os.getpid()}"
    options = AirflowOptions(data_dir=data_dir, db_url=f"{POSTGRES}/{database}", port=_free_port(),
                             end_date=FIRST, open_access=True)
    try:
        info = start(options)
        yield {"data_dir": data_dir, "url": info.url, "api": AirflowREST(info.url), "options": options}
    finally:
        stopped = stop(data_dir)
        print(f"stopped {stopped}")
        import psycopg2

        connection = psycopg2.connect(f"{POSTGRES}/postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.close()


def test_scheduled_first_day_triggers_personalisation_through_the_asset(airflow):
    api = airflow["api"]
    wait_for(lambda: features_states(api).get(FIRST) == "success", "scheduled features run of day 1", 300)
    wait_for(lambda: personalised_days(api).get(FIRST) == "success", "personalisation of day 1", 240)
    assert [run["run_type"] for run in api.runs("features")] == ["scheduled"]
    assert [run["run_type"] for run in api.runs("personalisation")] == ["asset_triggered"]


def test_rest_backfill_of_three_days_succeeds_and_fills_the_stores(airflow):
    api, data_dir = airflow["api"], airflow["data_dir"]
    backfill = api.backfill("features", DAYS[1], DAYS[3])
    assert backfill["dag_id"] == "features"
    wait_for(lambda: all(features_states(api).get(d) == "success" for d in DAYS[:4]), "backfilled days", 480)
    wait_for(lambda: all(personalised_days(api).get(d) == "success" for d in DAYS[:4]) and idle(api, "personalisation"),
             "personalisation of the backfilled days", 300)
    assert {run["run_type"] for run in api.runs("features")} == {"scheduled", "backfill"}
    for day in DAYS[:4]:
        for table in ("glmix_member", "meta_embedding"):
            assert (data_dir / "features" / table / f"dt={day}").is_dir(), f"{table} {day}"
    glmix_days = {m.get("logical_date") for m in model_labels(data_dir) if m["tag"].startswith("rankflow-glmix")}
    assert {d.isoformat() for d in DAYS[:4]} <= glmix_days

    # The weekly ranker on demand over the four days, then publish through the `ranker` Asset.
    api.trigger("ranker", {"start": DAYS[0].isoformat(), "end": DAYS[3].isoformat()})
    wait_for(lambda: idle(api, "ranker") and api.runs("ranker"), "ranker run", 420)
    assert api.runs("ranker")[-1]["state"] == "success"
    if api.runs("publish") or any(m["tag"].startswith("rankflow-ranker") and m.get("status") == "serving"
                                  for m in model_labels(data_dir)):
        wait_for(lambda: api.runs("publish") and idle(api, "publish"), "publish run", 300)
        assert api.runs("publish")[-1]["state"] == "success"
    online = data_dir / "feast"
    assert online.is_dir() and any(online.rglob("*")), "the online store is empty"


def test_rerunning_a_backfilled_day_gives_byte_identical_outputs(airflow):
    api, data_dir = airflow["api"], airflow["data_dir"]
    day = DAYS[2]
    before = partition_digests(data_dir, day)
    assert before, f"no partitions for {day}"
    personalisations = len(api.runs("personalisation"))
    api.backfill("features", day, day, reprocess="completed")
    wait_for(lambda: len(api.runs("personalisation")) > personalisations and idle(api, "personalisation")
             and idle(api, "features"), "the re-run and its personalisation", 420)
    assert features_states(api)[day] == "success"
    assert partition_digests(data_dir, day) == before


def test_a_bad_raw_day_fails_at_validation_and_later_days_still_run(airflow):
    import pyarrow.parquet as pq

    api, data_dir = airflow["api"], airflow["data_dir"]
    bad, good = DAYS[4], DAYS[5]
    events_file = data_dir / "raw" / "events" / f"dt={bad}" / "part-0.parquet"
    events = pq.read_table(events_file).to_pandas()
    events.loc[events.index[:5], "label"] = 3  # labels must be 0/1
    events.to_parquet(events_file, index=False)

    api.backfill("features", bad, good)
    wait_for(lambda: features_states(api).get(bad) == "failed" and features_states(api).get(good) == "success",
             "the bad day to fail and the good day to succeed", 420)
    wait_for(lambda: personalised_days(api).get(good) == "success" and idle(api, "personalisation"),
             "personalisation of the good day", 300)
    bad_run = next(run for run in api.runs("features") if run_day(run) == bad)
    log = api.task_log("features", bad_run["dag_run_id"], "validate_raw")
    assert "validation failed" in log and "reports/validation" in log
    assert bad not in personalised_days(api)
    assert not (data_dir / "features" / "glmix_member" / f"dt={bad}").exists()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="run scripts/ensure_chromium.sh to install Chromium")
def test_grid_view_screenshot_shows_the_runs(airflow, tmp_path):
    data_dir, url = airflow["data_dir"], airflow["url"]
    target = data_dir / "reports" / "airflow-grid.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    take_screenshot(f"{url}/auth/token/login?next={url}/dags/features", target, tmp_path / "chromium")
    assert target.stat().st_size > 20_000  # a rendered grid, not a blank page
    shutil.copy(target, tmp_path / target.name)


def take_screenshot(url: str, target: Path, profile: Path) -> None:
    """Headless Chromium, isolated profile, no network beyond the local UI."""
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000",
               "--hide-scrollbars", f"--screenshot={target}", url]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
