"""rankflow.airflow_local.stop(): it ends exactly what start() started, task processes included."""

from __future__ import annotations

import json
import subprocess
import time

from rankflow.airflow_local import AirflowOptions, _process_start_time, running_components, stop


def test_stop_ends_a_component_and_the_task_process_that_left_its_session(tmp_path):
    # A stand-in scheduler in its own session whose "task" calls setsid, as Airflow's task runner does.
    component = subprocess.Popen(["sh", "-c", "setsid sleep 300 & echo $!; wait"], stdout=subprocess.PIPE,
                                 text=True, start_new_session=True)
    task_pid = int(component.stdout.readline())
    run_dir = AirflowOptions(tmp_path).run_dir
    run_dir.mkdir(parents=True)
    record = {"pid": component.pid, "started": _process_start_time(component.pid), "log": "-"}
    (run_dir / "scheduler.pid").write_text(json.dumps(record))
    assert list(running_components(tmp_path)) == ["scheduler"]

    started = time.monotonic()
    assert stop(tmp_path, grace_s=10) == ["scheduler"]
    component.wait(timeout=10)
    assert _process_start_time(task_pid) is None, "the setsid task process survived stop()"
    assert time.monotonic() - started < 10  # SIGTERM sufficed: no wait for the grace period
    assert running_components(tmp_path) == {} and not (run_dir / "scheduler.pid").exists()
