"""Fixtures for the DAG tests: a private AIRFLOW_HOME, a migrated SQLite metadata DB, fake stages.

Airflow reads AIRFLOW_HOME and AIRFLOW__* when it is first imported, so they are set here, at
collection, before any test module imports it; every test in this folder shares one home.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import types
from datetime import date
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "dags"
# test_common.py imports this module a second time as `tests.dags.conftest`: a second fresh home would
# re-point the environment at an unmigrated DB after Airflow read the first one, so the home is made once.
AIRFLOW_HOME = Path(os.environ.get("RANKFLOW_DAG_TESTS_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="rankflow-dag-tests-"))
os.environ["RANKFLOW_DAG_TESTS_AIRFLOW_HOME"] = str(AIRFLOW_HOME)

os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__SCHEDULER__CREATE_CRON_DATA_INTERVALS": "True",
    # dag.test() waits out retry delays in real time; a failure here should fail the test at once.
    "AIRFLOW__RANKFLOW__RETRIES": "0",
})

STAGE_FUNCTIONS = {
    "features": ("validate_raw", "build_features", "materialize"),
    "personalise": ("update_random_effects",),
    "meta": ("refresh_meta_embeddings", "train_meta"),
    "ranker": ("train", "evaluate", "promote"),
    "publish": ("build_bento", "smoke_test", "promote_bento"),
}


def airflow_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("airflow")), *args], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout, check=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """The tests' metadata DB, migrated once per session (dag.test() needs one)."""
    airflow_cli("db", "migrate")
    return AIRFLOW_HOME


@pytest.fixture
def rankflow_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point the DAGs' `[rankflow] data_dir` at a fresh directory for this test."""

    def point_at(data_dir: Path) -> Path:
        monkeypatch.setenv("AIRFLOW__RANKFLOW__DATA_DIR", str(data_dir))
        return data_dir

    point_at(tmp_path / "data")
    return point_at


class FakeStages:
    """Stand-ins for rankflow.stages.*: record each call; `fail` makes one raise instead."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []
        self.keywords: dict[str, dict] = {}  # the keyword arguments of each stage's last call
        self.failures: dict[str, BaseException] = {}
        self.results: dict[str, dict] = {}

    def _stage(self, name: str):
        def stage(settings, *args, **kwargs):
            self.calls.append((name, args))
            self.keywords[name] = kwargs
            if name in self.failures:
                raise self.failures[name]
            default = {"tag": f"{name}:1", "bento_tag": f"{name}:1", "status": "serving"}
            return self.results.get(name, {**default, "args": [str(a) for a in args]})

        return stage

    def modules(self) -> dict[str, types.ModuleType]:
        modules = {}
        for area, functions in STAGE_FUNCTIONS.items():
            module = types.ModuleType(f"rankflow.stages.{area}")
            for function in functions:
                setattr(module, function, self._stage(function))
            modules[f"rankflow.stages.{area}"] = module
        return modules

    def called(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    fakes = FakeStages()
    for name, module in fakes.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return fakes


def validation_failure(day: date, report: Path):
    """A real validation.ValidationFailed, as a stage raises it."""
    from validation import ValidationFailed, ValidationResult

    return ValidationFailed(ValidationResult(success=False, suite="raw_events", day=day, statistics={},
                                             failures=["label: values outside {0, 1} (3 rows)"],
                                             report_path=report))
