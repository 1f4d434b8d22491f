"""Every DAG file parses fast, cleanly, and without importing the heavy stack at module level."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.dags.conftest import DAGS_FOLDER

DAG_FILES = {"features": "features_dag.py", "personalisation": "personalisation_dag.py",
             "ranker": "ranker_dag.py", "publish": "publish_dag.py"}
HEAVY = ("pyspark", "feast", "torch", "bentoml", "great_expectations", "validation", "training", "features.spark")

# Runs in a fresh interpreter: Airflow itself is imported first (the dag-processor has it loaded
# already), then the DAG file is loaded the way the processor loads it, from its path, and timed.
_PROBE = r"""
import importlib.util, json, sys, time
import airflow.sdk
path, heavy = sys.argv[1], sys.argv[2].split(",")
spec = importlib.util.spec_from_file_location("probe_dag_module", path)
module = importlib.util.module_from_spec(spec)
started = time.perf_counter()
spec.loader.exec_module(module)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy
                                                        or any(m.startswith(h + ".") or m == h for h in heavy))}))
"""


@pytest.mark.parametrize("dag_id", sorted(DAG_FILES))
def test_dag_file_imports_fast_without_heavy_modules(dag_id: str, tmp_path):
    env = {**os.environ, "AIRFLOW__RANKFLOW__DATA_DIR": str(tmp_path)}
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(DAGS_FOLDER / DAG_FILES[dag_id]), ",".join(HEAVY)],
                           capture_output=True, text=True, timeout=120, env=env, cwd=DAGS_FOLDER.parent)
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["seconds"] < 1.0, f"{dag_id} took {report['seconds']:.2f} s to import"
    assert report["heavy"] == [], f"{dag_id} imports heavy modules at parse time: {report['heavy']}"


def test_dag_file_names_do_not_shadow_the_packages_tasks_import():
    # Airflow puts the DAGs folder first on sys.path in task processes: a DAG file named like a
    # package (features.py) would be imported instead of it and break every stage import.
    packages = {path.name for path in DAGS_FOLDER.parent.iterdir() if (path / "__init__.py").exists()}
    assert {path.stem for path in DAGS_FOLDER.glob("*.py")} & packages == set()


def test_dagbag_has_the_four_dags_and_no_import_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__RANKFLOW__DATA_DIR", str(tmp_path))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == sorted(DAG_FILES)
    assert [t.task_id for t in bag.dags["features"].topological_sort()] == [
        "validate_raw", "build_features", "materialize"]
    assert [t.task_id for t in bag.dags["publish"].topological_sort()] == [
        "build_bento", "smoke_test", "promote_bento"]
    # Assets chain the DAGs: features -> personalisation, ranker -> publish.
    assert [a.name for a in bag.dags["features"].get_task("materialize").outlets] == ["features"]
    assert "rankflow://features" in repr(bag.dags["personalisation"].timetable.asset_condition)
    assert "rankflow://ranker" in repr(bag.dags["publish"].timetable.asset_condition)


def test_train_task_pool_and_queue_come_from_airflow_config(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__RANKFLOW__DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__RANKFLOW__GPU_POOL", "gpu")
    monkeypatch.setenv("AIRFLOW__RANKFLOW__GPU_QUEUE", "gpu")
    from airflow.dag_processing.dagbag import DagBag

    train = DagBag(dag_folder=str(DAGS_FOLDER / "ranker_dag.py")).dags["ranker"].get_task("train")
    assert (train.pool, train.queue) == ("gpu", "gpu")
