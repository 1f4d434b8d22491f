"""The `rankflow` console script: its error boundary (rankflow.cli.main), and the success paths of `rankflow train`,
`rankflow evaluate` and `rankflow personalise`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest


def _rankflow(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "RANKFLOW_DEBUG"}
    environment.update(COLUMNS="200", **env)
    return subprocess.run([sys.executable, "-m", "rankflow.cli", *args, "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, env=environment, timeout=300)


def test_an_error_the_user_can_act_on_is_one_line_and_exit_status_1(tmp_path):
    """A stage's ValueError / FileNotFoundError reaches the user as its message, not a traceback."""
    no_data = _rankflow(["train", "--start", "2026-01-02", "--end", "2026-01-05"], tmp_path)
    assert no_data.returncode == 1
    assert "rankflow train failed: FileNotFoundError:" in no_data.stderr, no_data.stderr
    assert "Traceback" not in no_data.stderr + no_data.stdout

    missing = _rankflow(["personalise", "--date", "2026-03-01"], tmp_path)
    assert missing.returncode == 1
    assert "rankflow personalise failed: FileNotFoundError:" in missing.stderr
    assert "no training set yet; run `rankflow features build` first" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_an_unknown_model_tag_or_nothing_to_roll_back_is_named(tmp_path):
    unknown = _rankflow(["evaluate", "rankflow-ranker:nope", "--date", "2026-01-10"], tmp_path)
    assert unknown.returncode == 1
    assert ("no model 'rankflow-ranker:nope' in the model store" in unknown.stderr
            and "(0 stored; the newest: none)" in unknown.stderr), unknown.stderr
    no_model = _rankflow(["serve", "--port", "3999"], tmp_path)  # at once, before any service worker starts
    assert no_model.returncode == 1 and "no serving rankflow-ranker; train and promote one first" in no_model.stderr
    nothing = _rankflow(["rollback"], tmp_path)
    assert nothing.returncode == 1 and "no previous rankflow-ranker to roll back to" in nothing.stderr


def test_rankflow_debug_shows_the_traceback(tmp_path):
    shown = _rankflow(["personalise", "--date", "2026-03-01"], tmp_path, RANKFLOW_DEBUG="1")
    assert shown.returncode == 1
    assert "Traceback" in shown.stderr and "no training set yet" in shown.stderr


def test_usage_errors_stay_clicks(tmp_path):
    """A bad flag value is click's usage error (exit status 2), untouched by the boundary."""
    bad = _rankflow(["personalise", "--date", "yesterday"], tmp_path)
    assert bad.returncode == 2 and "expected YYYY-MM-DD" in bad.stderr
    for command in (["train"], ["features", "build"], ["personalise"]):
        reversed_days = _rankflow([*command, "--start", "2026-01-05", "--end", "2026-01-02"], tmp_path)
        assert reversed_days.returncode == 2, (command, reversed_days.stderr)
        assert "--end 2026-01-02 is before --start 2026-01-05" in reversed_days.stderr


def _alive(pid: int) -> bool:
    """Running (a zombie, reaped or not, has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_to_rankflow_serve_stops_the_service_it_started(tmp_path, signal_name):
    """`rankflow serve` runs BentoML in its own process group (publish.run_in_foreground). A SIGTERM to
    rankflow (a process manager, `timeout`) must reach that group: it used to end rankflow alone and leave
    the service's workers running without a parent. A SIGHUP (its terminal closed) must stop it too: BentoML's
    circus reloads on SIGHUP, so the fake service here ignores SIGHUP as circus would keep running."""
    import signal
    import time

    pid_file = tmp_path / "worker.pid"
    ignore_hup = "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    service = (ignore_hup + "import subprocess, sys, time; "
               f"worker = subprocess.Popen([sys.executable, '-c', {ignore_hup + 'import time; time.sleep(300)'!r}]); "
               f"open({str(pid_file)!r}, 'w').write(str(worker.pid)); time.sleep(300)")
    runner = subprocess.Popen([sys.executable, "-c",
                               "import os, sys; from rankflow.stages.publish import run_in_foreground; "
                               f"sys.exit(run_in_foreground([sys.executable, '-c', {service!r}], '.', dict(os.environ)))"])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    assert _alive(worker)
    runner.send_signal(getattr(signal, signal_name))
    runner.wait(30)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the service's worker outlived rankflow"


# ---------------------------------------------------------------------------------------------
# Success paths of the ranker and personalisation commands, on the tiny marketplace with a training set
# built from its raw zone (tiny_marketplace.write_training_set_from_raw: no Spark) and its truth/.

EVAL_LINE = re.compile(r"eval (?P<days>\S+): AUC (?P<auc>[\d.]+)  log loss (?P<log_loss>[\d.]+)  ECE (?P<ece>[\d.]+)  "
                       r"NE (?P<normalized_entropy>[\d.]+)  oracle AUC (?P<oracle_auc>[\d.]+)")
CANDIDATE_LINE = re.compile(r"candidate (?P<tag>rankflow-ranker:\w+) \((?:warm start from )?(?P<parent>[^)]+)\) "
                            r"trained on (?P<days>[\d\-, ]+) in")


@pytest.fixture(scope="module")
def trained_by_cli(tiny_data_dir, tmp_path_factory):
    """Three `rankflow train` runs on a copy of the tiny marketplace (days 1-4 as a training set):
    the default (warm start, nothing serving yet) with --promote on days 1-2, then --warm-start and --full on 1-3.
    Returns (data dir, {run: completed process})."""
    import shutil

    from tiny_marketplace import write_training_set_from_raw

    root = shutil.copytree(tiny_data_dir, tmp_path_factory.mktemp("cli") / "data")
    write_training_set_from_raw(root, [date(2026, 1, 1) + timedelta(days=i) for i in range(4)])
    common = ["--epochs", "2", "--device", "cpu"]
    runs = {
        "first": ["train", "--start", "2026-01-01", "--end", "2026-01-02", *common, "--promote"],
        "warm": ["train", "--start", "2026-01-01", "--end", "2026-01-03", *common, "--warm-start"],
        "full": ["train", "--start", "2026-01-01", "--end", "2026-01-03", *common, "--full"],
    }
    return root, {name: _rankflow(args, root, OMP_NUM_THREADS="1") for name, args in runs.items()}


def _printed_run(process: subprocess.CompletedProcess) -> tuple[dict, dict]:
    """(the candidate line's tag, parent and days; the eval line's numbers as printed) of a `rankflow train`."""
    assert process.returncode == 0, process.stderr[-3000:]
    candidate, evaluation = CANDIDATE_LINE.search(process.stdout), EVAL_LINE.search(process.stdout)
    assert candidate and evaluation, process.stdout
    return candidate.groupdict(), evaluation.groupdict()


@pytest.mark.slow
def test_rankflow_train_prints_the_metrics_it_stored_warm_started_or_retrained(trained_by_cli):
    from rankflow.config import load_settings
    from rankflow.stages import ranker as stage

    root, runs = trained_by_cli
    settings = load_settings(root)
    printed = {name: _printed_run(process) for name, process in runs.items()}
    first, warm, full = (printed[name][0] for name in ("first", "warm", "full"))
    assert first["parent"] == "full retrain: no serving model to warm-start from"
    assert first["days"] == "2026-01-01, 2026-01-02"
    assert '"status": "serving"' in runs["first"].stdout and stage.serving_tag(settings) == first["tag"]
    assert warm["parent"] == first["tag"] and warm["days"] == "2026-01-03"                # the newest day only
    assert full["parent"] == "full retrain" and full["days"] == "2026-01-01, 2026-01-02, 2026-01-03"
    assert len({first["tag"], warm["tag"], full["tag"]}) == 3

    for name, (candidate, evaluation) in printed.items():
        metadata = stage.model_info(settings, candidate["tag"])["metadata"]
        assert evaluation["days"] == ", ".join(metadata["eval_days"]), name
        for key in ("auc", "log_loss", "ece", "normalized_entropy", "oracle_auc"):
            assert evaluation[key] == f"{metadata['metrics'][key]:.4f}", (name, key)
    assert printed["first"][1]["days"] == "2026-01-03" and printed["warm"][1]["days"] == "2026-01-04"
    assert stage.model_info(settings, warm["tag"])["metadata"]["warm_start_from"] == first["tag"]
    assert float(printed["full"][1]["oracle_auc"]) > float(printed["full"][1]["auc"]) > 0.55




@pytest.mark.slow
def test_rankflow_evaluate_prints_the_metrics_of_the_serving_or_named_model(trained_by_cli):
    from rankflow.config import load_settings
    from rankflow.stages import ranker as stage

    root, runs = trained_by_cli
    settings = load_settings(root)
    serving = _printed_run(runs["first"])[0]["tag"]
    warm = _printed_run(runs["warm"])[0]["tag"]
    for args, tag, day in ((["evaluate", "--date", "2026-01-03"], serving, "2026-01-03"),      # no tag: the serving one
                           (["evaluate", warm, "--date", "2026-01-04"], warm, "2026-01-04")):
        process = _rankflow(args, root, OMP_NUM_THREADS="1")
        assert process.returncode == 0, process.stderr[-3000:]
        printed = json.loads(process.stdout)
        assert printed["tag"] == tag and printed["day"] == day
        stored = stage.model_info(settings, tag)["metadata"]["metrics"]   # what `train` measured on that day
        for key in ("auc", "log_loss", "ece", "normalized_entropy", "auc_warm", "oracle_auc"):
            assert printed[key] == pytest.approx(stored[key], abs=1e-9), (tag, key)
        assert printed["rows"] == 2000


@pytest.mark.slow
def test_rankflow_personalise_writes_the_days_glmix_state(trained_by_cli, tmp_path):
    import json
    import shutil

    root = shutil.copytree(trained_by_cli[0], tmp_path / "data")   # the other tests' data dir stays as it is
    serving = _printed_run(trained_by_cli[1]["first"])[0]["tag"]
    state = root / "models" / "glmix" / "dt=2026-01-04"
    assert not state.exists()
    process = _rankflow(["personalise", "--date", "2026-01-04"], root, OMP_NUM_THREADS="1")
    assert process.returncode == 0, process.stderr[-3000:]
    line = re.search(r"2026-01-04: (\d+) members, (\d+) jobs updated \(prior population, global part ranker\)",
                     process.stdout)
    assert line, process.stdout
    assert sorted(p.name for p in state.iterdir()) == ["job.safetensors", "member.safetensors", "meta.json"]
    meta = json.loads((state / "meta.json").read_text())
    assert meta["logical_date"] == "2026-01-04" and meta["global_part"] == "ranker" and meta["ranker_tag"] == serving
    result = json.loads(process.stdout[process.stdout.index("\n{") + 1:])
    assert result["state"] == str(state)
    assert (result["members_updated"], result["jobs_updated"]) == (int(line.group(1)), int(line.group(2)))
    assert result["members_updated"] > 100 and result["jobs_updated"] > 50
