"""What `rankflow` says when something is wrong: one line instead of a traceback, usage errors before any work,
nothing created by a command that only reads, JSON results, and messages that say what is true.

Fast: the tiny marketplace (tests/conftest.py), a training set built from its raw zone without Spark
(tiny_marketplace.write_training_set_from_raw), `python -m rankflow.cli` where the error boundary
(rankflow.cli.main) matters and typer's CliRunner where it does not.
"""

from __future__ import annotations

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
from typer.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parents[1]
DAY_1, DAY_2, DAY_3 = date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)


def _rankflow(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """The console script's behaviour (rankflow.cli.main) in a fresh process, without RANKFLOW_* from outside."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RANKFLOW_")}
    environment.update(COLUMNS="200", **env)
    return subprocess.run([sys.executable, "-m", "rankflow.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=REPO_ROOT, timeout=300)


def _invoke(args: list[str]):
    from rankflow.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def _one_line_failure(process: subprocess.CompletedProcess, command: str) -> str:
    """The failure line of `command` (exit status 1, no traceback); returns it."""
    assert process.returncode == 1, (process.returncode, process.stderr[-3000:])
    assert "Traceback" not in process.stderr + process.stdout, process.stderr[-3000:]
    lines = [line for line in process.stderr.splitlines() if line.startswith(f"{command} failed: ")]
    assert len(lines) == 1, process.stderr[-3000:]
    return lines[0]


def _dead_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def data_dir(tiny_data_dir, tmp_path) -> Path:
    """A writable copy of the tiny marketplace (raw zone, truth, rankflow.yaml)."""
    return shutil.copytree(tiny_data_dir, tmp_path / "data")


# ---------------------------------------------------------------------------------------------
# 1. Tracebacks where one line is promised


def test_an_online_store_that_does_not_answer_fails_at_once_in_one_line_naming_it(data_dir):
    url = f"redis://localhost:{_dead_port()}/0"
    (data_dir / "features").mkdir()
    for command in (["features", "materialize", "--date", "2026-01-01"], ["features", "lookup", "--member-id", "17"]):
        if command[1] == "lookup":
            (data_dir / "feast").mkdir()
        started = time.monotonic()
        process = _rankflow([*command, "--online-store", url, "--data-dir", str(data_dir)])
        line = _one_line_failure(process, f"rankflow {' '.join(command[:2])}")
        assert f"the online store {url} does not answer" in line and "Connection refused" in line, line
        assert time.monotonic() - started < 12, "no fast failure: redis-py's retries ran"


def test_the_store_url_in_a_message_hides_its_password():
    from rankflow.config import redacted

    assert redacted("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redacted("rediss://user:s3cret@cache/2") == "rediss://user:***@cache/2"
    assert redacted("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_a_malformed_rankflow_yaml_is_one_line_naming_the_file_and_line(tmp_path):
    config = tmp_path / "rankflow.yaml"
    config.write_text("online_store: sqlite\nspark_master: [\n")
    process = _rankflow(["personalise", "--date", "2026-01-02", "--data-dir", str(tmp_path)])
    line = _one_line_failure(process, "rankflow personalise")
    assert f"ConfigError: {config}, line 3, column 1: not valid YAML" in line, line


@pytest.mark.parametrize("text, expected", [
    ("generator: {members: 10, mebers: 3}\n", "line 1: unknown generator setting 'mebers'"),
    ("spark_master: local[2]\ngenerator: {members: lots}\n", "line 2: generator.members must be an integer, got 'lots'"),
    ("offline_store: parquet\n", "line 1: offline_store 'parquet': expected one of 'file', 'spark'"),
    ("online_store: mysql://db\n", "line 1: online_store 'mysql://db': expected 'sqlite' or a Redis URL"),
    ("- spark_master\n", "expected a mapping of settings"),
    ("spark_driver_memory: lots\n", "line 1: spark_driver_memory 'lots': expected a size such as 2g"),
    ("spark_driver_memory: 8\n", "line 1: spark_driver_memory must be a string, got 8"),
    ("online_store: sqlite\nglmix_keep_days: 0\n", "line 2: glmix_keep_days 0: expected a whole number of days >= 1"),
    ("glmix_keep_days: '7'\n", "line 1: glmix_keep_days must be a number, got '7'"),
    ("glmix_keep_days: 2.5\n", "line 1: glmix_keep_days 2.5: expected a whole number of days >= 1"),
])
def test_a_setting_that_cannot_be_used_names_the_file_and_line(tmp_path, text, expected):
    from rankflow.config import ConfigError, load_settings

    (tmp_path / "rankflow.yaml").write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(tmp_path)
    assert f"{tmp_path / 'rankflow.yaml'}" in str(error.value) and expected in str(error.value), str(error.value)


def test_an_environment_value_that_cannot_be_used_names_the_variable(tmp_path, monkeypatch):
    from rankflow.config import ConfigError, load_settings

    monkeypatch.setenv("RANKFLOW_OFFLINE_STORE", "parquet")
    with pytest.raises(ConfigError, match="environment variable RANKFLOW_OFFLINE_STORE: 'parquet': expected one of"):
        load_settings(tmp_path)


def test_glmix_retention_comes_from_rankflow_yaml_the_environment_or_the_flag(tmp_path, monkeypatch):
    from rankflow.config import ConfigError, load_settings

    assert load_settings(tmp_path).glmix_keep_days is None  # default: every state is kept
    (tmp_path / "rankflow.yaml").write_text("glmix_keep_days: 30\n")
    assert load_settings(tmp_path).glmix_keep_days == 30
    monkeypatch.setenv("RANKFLOW_GLMIX_KEEP_DAYS", "7")
    assert load_settings(tmp_path).glmix_keep_days == 7
    assert load_settings(tmp_path, glmix_keep_days=3).glmix_keep_days == 3  # the CLI's --keep-days
    monkeypatch.setenv("RANKFLOW_GLMIX_KEEP_DAYS", "a week")
    with pytest.raises(ConfigError, match="RANKFLOW_GLMIX_KEEP_DAYS: 'a week': expected a whole number of days >= 1"):
        load_settings(tmp_path)


def test_rankflow_prune_needs_a_number_of_days_and_its_dry_run_deletes_nothing(tmp_path):
    state = tmp_path / "models" / "glmix" / "dt=2026-01-01"
    state.mkdir(parents=True)
    (state / "meta.json").write_text("{}")
    missing = _rankflow(["prune", "--data-dir", str(tmp_path)])
    assert missing.returncode == 2 and "--keep-days" in missing.stderr, missing.stderr
    (tmp_path / "models" / "glmix" / "dt=2026-01-02").mkdir()
    (tmp_path / "models" / "glmix" / "dt=2026-01-02" / "meta.json").write_text("{}")
    dry = _rankflow(["prune", "--keep-days", "1", "--dry-run", "--data-dir", str(tmp_path)])
    assert dry.returncode == 0, dry.stderr
    assert "would delete the GLMix states of 2026-01-01..2026-01-01 (1, 0.0 MB of state files)" in dry.stdout, dry.stdout
    assert state.exists() and not (tmp_path / "models" / "glmix" / "pruned.json").exists()


def test_the_spark_driver_memory_comes_from_rankflow_yaml_or_the_environment(tmp_path, monkeypatch):
    """A day of millions of events needs more than the 2g default heap: rankflow.yaml or
    RANKFLOW_SPARK_DRIVER_MEMORY sets spark.driver.memory of the session the feature jobs start."""
    from features.spark import session
    from rankflow.config import load_settings

    (tmp_path / "rankflow.yaml").write_text("spark_driver_memory: 6g\n")
    assert load_settings(tmp_path).spark_driver_memory == "6g"
    monkeypatch.setenv("RANKFLOW_SPARK_DRIVER_MEMORY", "12g")
    settings = load_settings(tmp_path)
    assert settings.spark_driver_memory == "12g"

    conf = {}

    class Builder:  # records the session's configuration instead of starting a JVM
        def master(self, value):
            return self

        def appName(self, value):
            return self

        def config(self, key, value):
            conf[key] = value
            return self

        def getOrCreate(self):
            raise RuntimeError("not started")

    monkeypatch.setattr(session, "_session", None)
    monkeypatch.setattr(session.SparkSession, "builder", Builder())
    with pytest.raises(RuntimeError, match="not started"):
        session.spark_session(settings)
    assert conf["spark.driver.memory"] == "12g"


def test_train_device_is_a_usage_error_before_any_work(tmp_path):
    import torch

    days = ["train", "--start", "2026-01-01", "--end", "2026-01-02", "--data-dir", str(tmp_path)]
    tpu = _invoke([*days, "--device", "tpu"])
    assert tpu.exit_code == 2 and "--device" in tpu.output and "'tpu' is not one of" in tpu.output, tpu.output
    if not torch.cuda.is_available():
        cuda = _invoke([*days, "--device", "cuda"])
        assert cuda.exit_code == 2, cuda.output
        assert "--device" in cuda.output and "torch sees no CUDA device here" in cuda.output, cuda.output


# ---------------------------------------------------------------------------------------------
# 2. Commands that read a data dir create nothing when it (or the zone they read) is missing


def test_read_only_commands_refuse_a_missing_data_dir_and_create_nothing(tmp_path):
    missing = tmp_path / "nonexistent"
    for path, args in (("features lookup", ["--member-id", "17"]),
                       ("evaluate", ["rankflow-ranker:v1", "--date", "2026-01-02"]),
                       ("serve skew-check", ["--date", "2026-01-02"]), ("airflow status", [])):
        process = _rankflow([*path.split(), *args, "--data-dir", str(missing)])
        line = _one_line_failure(process, f"rankflow {path}")
        assert f"FileNotFoundError: {missing}: no such data directory" in line, line
        assert not missing.exists(), path


def test_lookup_without_a_feast_repo_says_what_writes_it_and_creates_nothing(tmp_path):
    result = _invoke(["features", "lookup", "--member-id", "17", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError), result.output
    assert f"{tmp_path / 'feast'}: no Feast repo yet" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 3. Enumerated options are checked before any work


def test_store_options_are_usage_errors_before_any_work(data_dir):
    started = time.monotonic()
    offline = _invoke(["features", "build", "--date", "2026-01-01", "--offline-store", "parquet",
                       "--data-dir", str(data_dir)])
    assert offline.exit_code == 2 and "--offline-store" in offline.output and "'parquet'" in offline.output, offline.output
    online = _invoke(["features", "materialize", "--date", "2026-01-01", "--online-store", "mysql://db",
                      "--data-dir", str(data_dir)])
    assert online.exit_code == 2 and "--online-store" in online.output, online.output
    assert "expected 'sqlite' or a Redis URL" in online.output
    assert time.monotonic() - started < 5  # no Spark session, no feast apply
    assert not (data_dir / "features").exists() and not (data_dir / "feast").exists()


# ---------------------------------------------------------------------------------------------
# 4, 5, 7. The ranker commands: JSON results, tags, and what `train` says


@pytest.fixture(scope="module")
def ranker_dir(tiny_data_dir, tmp_path_factory):
    """The tiny marketplace with a training set for days 1-4 and one candidate trained on days 1-2 (the CLI's
    first `rankflow train`, promoted: nothing served before it). Returns (data dir, that train's result)."""
    from tiny_marketplace import write_training_set_from_raw

    root = shutil.copytree(tiny_data_dir, tmp_path_factory.mktemp("messages") / "data")
    write_training_set_from_raw(root, [DAY_1 + timedelta(days=i) for i in range(4)])
    first = _invoke(["train", "--start", "2026-01-01", "--end", "2026-01-02", "--epochs", "1", "--device", "cpu",
                     "--promote", "--data-dir", str(root)])
    assert first.exit_code == 0, f"{first.output}\n{first.exception!r}"
    return root, first


def _tag(output: str) -> str:
    return output.split("candidate ", 1)[1].split(" ", 1)[0]


def test_train_says_full_retrain_and_why_a_warm_start_trains_fewer_days(ranker_dir, caplog):
    root, first = ranker_dir
    assert "(full retrain: no serving model to warm-start from) trained on 2026-01-01, 2026-01-02" in first.output
    assert "nothing: full retrain" not in first.output
    promoted = json.loads(first.output[first.output.index("\n{") + 1:])
    assert promoted == {"tag": _tag(first.output), "status": "serving", "reason": "no model was serving"}

    common = ["--epochs", "1", "--device", "cpu", "--data-dir", str(root)]
    warm = _invoke(["train", "--start", "2026-01-01", "--end", "2026-01-03", "--eval-days", "0", *common])
    assert warm.exit_code == 0, f"{warm.output}\n{warm.exception!r}"
    assert f"(warm start from {_tag(first.output)}) trained on 2026-01-03 in" in warm.output
    assert (f"a warm start trains {_tag(first.output)} further on the days after its own (2026-01-01..2026-01-02): "
            "2026-01-03; a full retrain (--full) trains on 2026-01-01..2026-01-03") in " ".join(warm.output.split())
    assert "not evaluated (--eval-days 0)" in warm.output
    assert not [r for r in caplog.records if "to evaluate on" in r.getMessage()], "warned about evaluation not asked for"

    full = _invoke(["train", "--start", "2026-01-01", "--end", "2026-01-02", "--full", *common])
    assert full.exit_code == 0, f"{full.output}\n{full.exception!r}"
    assert "(full retrain) trained on 2026-01-01, 2026-01-02 in" in full.output
    assert "a warm start" not in full.output


def test_train_says_when_the_serving_model_cannot_be_warm_started_because_the_spec_changed(ranker_dir, tmp_path):
    """A serving model whose inputs differ from the training set's spec (a feature added or dropped) cannot
    be continued: `train` retrains in full and says that reason, not "no serving model"."""
    root, first = ranker_dir
    copy = shutil.copytree(root, tmp_path / "data")
    spec_file = copy / "features" / "training_set" / "spec.json"
    spec = json.loads(spec_file.read_text())
    spec["dense"] = spec["dense"][:-1]  # one dense feature fewer than the serving model was built on
    spec_file.write_text(json.dumps(spec))
    result = _invoke(["train", "--start", "2026-01-01", "--end", "2026-01-02", "--eval-days", "0", "--epochs", "1",
                      "--device", "cpu", "--data-dir", str(copy)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    said = " ".join(result.output.split())
    assert (f"(full retrain: the serving model {_tag(first.output)} does not match the training set's spec "
            "(its features or architecture changed)) trained on 2026-01-01, 2026-01-02") in said, said
    assert "no serving model" not in said


def test_evaluate_takes_a_bare_version_and_prints_json(ranker_dir):
    from rankflow.stages import ranker as stage
    from rankflow.config import load_settings

    root, first = ranker_dir
    tag = _tag(first.output)
    result = _invoke(["evaluate", tag.split(":")[1], "--date", "2026-01-03", "--data-dir", str(root)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    printed = json.loads(result.stdout)
    stored = stage.model_info(load_settings(root), tag)["metadata"]["metrics"]
    assert printed["tag"] == tag and printed["day"] == "2026-01-03" and printed["rows"] == 2000
    assert type(printed["auc"]) is float and printed["auc"] == pytest.approx(stored["auc"], abs=1e-12)


def test_promote_prints_json_and_refuses_a_tag_of_another_model(ranker_dir):
    root, first = ranker_dir
    again = _invoke(["promote", _tag(first.output), "--data-dir", str(root)])
    assert again.exit_code == 0, f"{again.output}\n{again.exception!r}"
    assert json.loads(again.stdout) == {"tag": _tag(first.output), "status": "serving", "reason": "already serving"}

    meta = _invoke(["promote", "rankflow-meta:abc123", "--data-dir", str(root)])
    assert meta.exit_code == 2, meta.output
    said = " ".join(meta.output.replace("│", " ").split())
    assert "rankflow-meta:abc123 is not a rankflow-ranker model but a rankflow-meta model" in said, said
    assert "give rankflow-ranker:VERSION" in said


def test_meta_train_names_the_metric_of_its_evaluation(tmp_path, monkeypatch):
    import rankflow.stages.meta as meta_stage

    buckets = [{"bucket": "few (1-10)", "members": 14, "events": 245, "adapted": 0.61, "meta_init": 0.58,
                "random_init": float("nan")}]
    monkeypatch.setattr(meta_stage, "train_meta", lambda settings, day, progress=None: {
        "day": day.isoformat(), "metrics": {"tasks": 3, "eval": buckets}})
    result = _invoke(["meta", "train", "--date", "2026-01-04", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert "few (1-10)  AUC adapted 0.6100  meta-init 0.5800  random-init + k steps n/a" in result.output
    printed = json.loads(result.output[result.output.index("\n{") + 1:])
    assert printed["metrics"]["eval_metric"] == "auc" and printed["metrics"]["eval"][0]["random_init"] is None


# ---------------------------------------------------------------------------------------------
# 6, 8. Feature builds: what a failed validation left where, said once; the full command path


def test_no_raw_events_mentions_a_quarantine_only_when_there_is_one(data_dir):
    from rankflow.config import load_settings
    from rankflow.stages.features import validate_raw

    settings = load_settings(data_dir)
    with pytest.raises(FileNotFoundError) as missing:
        validate_raw(settings, date(2026, 3, 1))
    assert "quarantine" not in str(missing.value) and "`rankflow generate` or `rankflow ingest`" in str(missing.value)

    quarantined = settings.paths.quarantine("raw_events", DAY_2)
    quarantined.mkdir(parents=True)
    shutil.move(settings.paths.raw_partition("events", DAY_2), quarantined / "partition")
    with pytest.raises(FileNotFoundError) as moved:
        validate_raw(settings, DAY_2)
    assert f"they failed validation and were moved to {quarantined / 'partition'}" in str(moved.value)


def test_a_failed_raw_validation_is_reported_once_with_what_was_moved_and_how_to_restore(data_dir):
    import pandas as pd

    from rankflow.paths import DataPaths

    paths = DataPaths(data_dir)
    part = paths.raw_partition("events", DAY_2) / "part-0.parquet"
    events = pd.read_parquet(part)
    events.loc[events.index[1], "event_id"] = events.loc[events.index[0], "event_id"]
    events.to_parquet(part, index=False)

    process = _rankflow(["features", "build", "--date", "2026-01-02", "--data-dir", str(data_dir)])
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr[-3000:]
    said = " ".join(process.stderr.split())
    assert said.count("validation suite 'raw_events' for 2026-01-02 FAILED") == 1, process.stderr
    assert "rankflow features build failed: validation failed: validation suite 'raw_events'" in said
    quarantined = paths.quarantine("raw_events", DAY_2) / "partition"
    assert f"moved to {quarantined}" in said and f"mv {quarantined} {paths.raw_partition('events', DAY_2)}" in said
    assert "Nothing was written for that day" not in said and "Nothing of 2026-01-02 was written to features/" in said
    assert quarantined.is_dir() and not paths.raw_partition("events", DAY_2).exists()


def test_failures_name_the_full_command_path(data_dir):
    """`features materialize` of a day not built yet is a failure like any other (it was `error: ...`, exit 2)."""
    (data_dir / "features").mkdir()
    unbuilt = _rankflow(["features", "materialize", "--date", "2026-01-02", "--data-dir", str(data_dir)])
    line = _one_line_failure(unbuilt, "rankflow features materialize")
    assert "FileNotFoundError:" in line and "build the day before materialising it" in line, line
    assert not (data_dir / "feast").exists()  # said before the store opened: no feast apply, nothing written
    rollback = _rankflow(["serve", "rollback", "--data-dir", str(data_dir)])
    assert "no previous rankflow-ranker to roll back to" in _one_line_failure(rollback, "rankflow serve rollback")


def test_the_command_path_skips_options_and_their_values():
    from rankflow.cli import command_path

    assert command_path(["features", "build", "--date", "2026-01-02"]) == "rankflow features build"
    assert command_path(["serve", "--port", "3000", "rollback"]) == "rankflow serve rollback"
    assert command_path(["serve", "--no-batching", "--data-dir=x", "skew-check"]) == "rankflow serve skew-check"
    assert command_path(["meta", "--date", "2026-01-02"]) == "rankflow meta"
    assert command_path(["evaluate", "rankflow-ranker:v1"]) == "rankflow evaluate"


# ---------------------------------------------------------------------------------------------
# 9. `rankflow serve` checks its configuration before it announces the service


def test_serve_checks_serving_yaml_before_it_says_it_is_serving(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "serving.json").write_text(json.dumps({"rankflow-ranker": {"tag": "rankflow-ranker:v1"}}))
    (tmp_path / "serving.yaml").write_text("default_k: 5\nmax_candidates: lots\n")
    process = _rankflow(["serve", "--port", str(_dead_port()), "--data-dir", str(tmp_path)])
    line = _one_line_failure(process, "rankflow serve")
    assert f"{tmp_path / 'serving.yaml'}, line 2: serving setting max_candidates: expected int, got 'lots'" in line
    assert "Ctrl-C stops" not in process.stdout + process.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path):
    """A port held by another process (say the workers a SIGKILLed `rankflow serve` left behind) is one line
    naming the address and how to find the holder, before any model is loaded: it was BentoML's 55-line traceback."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = _rankflow(["serve", "--port", str(port), "--data-dir", str(tmp_path)])
    line = _one_line_failure(process, "rankflow serve")
    assert f"127.0.0.1:{port} is already in use" in line and f"ss -ltnp 'sport = :{port}'" in line
    assert "Ctrl-C stops" not in process.stdout + process.stderr
