"""The `rankflow` console script's error boundary (rankflow.cli.main)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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


def test_sigterm_to_rankflow_serve_stops_the_service_it_started(tmp_path):
    """`rankflow serve` runs BentoML in its own process group (publish.run_in_foreground). A SIGTERM to
    rankflow (a process manager, `timeout`) must reach that group: it used to end rankflow alone and leave
    the service's workers running without a parent."""
    import signal
    import time

    pid_file = tmp_path / "worker.pid"
    service = ("import subprocess, sys, time; "
               "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
               f"open({str(pid_file)!r}, 'w').write(str(worker.pid)); time.sleep(300)")
    runner = subprocess.Popen([sys.executable, "-c",
                               "import os, sys; from rankflow.stages.publish import run_in_foreground; "
                               f"sys.exit(run_in_foreground([sys.executable, '-c', {service!r}], '.', dict(os.environ)))"])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    assert _alive(worker)
    runner.send_signal(signal.SIGTERM)
    runner.wait(30)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the service's worker outlived rankflow"
