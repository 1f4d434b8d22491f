"""Publish stage: build the Bento, smoke-test it, promote it; plus starting and stopping the service.

    build_bento(settings)                 `bentoml build -f serving/bentofile.yaml` into <data_dir>/models/bentoml
    smoke_test(settings, bento_tag)       serve the built Bento on a free loopback port, rank once, stop
    promote_bento(settings, bento_tag)    models/serving.json -> rankflow-ranking: tag (previous kept in history)
    rollback(settings)                    previous ranker and previous Bento serve again

`start_service` runs `bentoml serve` (the source tree's `serving.service:Ranking`, or a built Bento) as a
child process with the data dir, online store and ServingConfig in its environment, waits for /readyz
and returns a handle whose `stop()` ends it (and only it). `rankflow serve`, the smoke test, the tests
and the benchmark all start the service this way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankflow.config import Settings
from rankflow.logs import get_logger

log = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BENTOFILE = REPO_ROOT / "serving" / "bentofile.yaml"
SERVICE_TARGET = "serving.service:Ranking"
BENTO_NAME = "rankflow-ranking"


@dataclass(frozen=True)
class ServeOptions:
    """How to start the service: where it listens and the ServingConfig fields to override."""

    port: int = 3000
    host: str = "127.0.0.1"
    adaptive_batching: bool | None = None
    max_candidates: int | None = None
    feature_deadline_ms: float | None = None
    candidate_cache_seconds: float | None = None
    reload_check_seconds: float | None = None
    ready_timeout_s: float = 180.0
    log_file: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Raise OSError (one line: the address and what to do) when nothing could listen on host:port now."""
    import errno

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the service's server binds
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OSError(f"{host}:{port} is already in use: another service, or the workers of a `rankflow "
                              f"serve` that was killed with SIGKILL (`ss -ltnp 'sport = :{port}'` names the process); "
                              "stop it or choose another --port") from None
            raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def _bentoml() -> str:
    return str(Path(sys.executable).with_name("bentoml"))


def service_environment(settings: Settings, options: ServeOptions, from_source: bool = True) -> dict[str, str]:
    """The environment of the service processes: the one place the settings reach them.

    from_source: the source tree goes on PYTHONPATH; a built Bento runs its own copy of the code instead.
    """
    from serving.config import load_serving_config, serving_environment

    overrides = {k: getattr(options, k) for k in ("adaptive_batching", "max_candidates", "feature_deadline_ms",
                                                   "candidate_cache_seconds", "reload_check_seconds")}
    config = load_serving_config(settings, environ={}, **overrides)
    env = {**os.environ, **serving_environment(config), **options.extra_env}
    env.update({
        "RANKFLOW_DATA_DIR": str(settings.data_dir.resolve()),
        "RANKFLOW_ONLINE_STORE": settings.online_store,
        "RANKFLOW_OFFLINE_STORE": settings.offline_store,
        "BENTOML_HOME": str(settings.paths.bentoml_home.resolve()),
        "BENTOML_DO_NOT_TRACK": "True",
    })
    if from_source:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@dataclass
class ServiceProcess:
    """A running `bentoml serve` started by `start_service`."""

    process: subprocess.Popen
    url: str
    log_file: Path

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own process group: the workers go with it
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "ServiceProcess":
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


def wait_ready(url: str, timeout_s: float, process: subprocess.Popen | None = None, log_file: Path | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-4000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"the service exited with code {process.returncode} before it was ready:\n{tail}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/readyz did not answer 200 within {timeout_s:.0f} s")


def start_service(settings: Settings, options: ServeOptions = ServeOptions(), bento: str | None = None) -> ServiceProcess:
    """`bentoml serve` (source tree or a built Bento) in the background; returns once /readyz is 200."""
    from serving.models import resolve_tags

    resolve_tags(settings)  # no promoted ranker: say so now, not after the workers' crash loop times out
    settings.paths.run.mkdir(parents=True, exist_ok=True)
    log_file = options.log_file or settings.paths.run / f"serve-{options.port}.log"
    command = [_bentoml(), "serve", bento or SERVICE_TARGET, "--host", options.host, "--port", str(options.port)]
    if bento is None:
        command += ["--working-dir", str(REPO_ROOT)]
    with open(log_file, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT if bento is None else settings.paths.run,
                                   env=service_environment(settings, options, from_source=bento is None),
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    handle = ServiceProcess(process, f"http://{options.host}:{options.port}", log_file)
    try:
        wait_ready(handle.url, options.ready_timeout_s, process, log_file)
    except BaseException:
        handle.stop()
        raise
    return handle


def serve_foreground(settings: Settings, options: ServeOptions) -> int:
    """`rankflow serve`: the service in the foreground until it exits, Ctrl-C, SIGTERM or SIGHUP."""
    command = [_bentoml(), "serve", SERVICE_TARGET, "--host", options.host, "--port", str(options.port),
               "--working-dir", str(REPO_ROOT)]
    return run_in_foreground(command, REPO_ROOT, service_environment(settings, options))


def run_in_foreground(command: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run `command` in its own process group until it exits; Ctrl-C, SIGTERM and SIGHUP stop the whole group.

    The group is its own so that a terminal's Ctrl-C reaches BentoML once, through us. Without the forwarding, a
    SIGTERM (a process manager, `timeout`, a killed Airflow task) ended this process alone and left the
    service's workers running with no parent. A SIGHUP (the terminal closed) is passed on as SIGTERM: BentoML's
    process manager (circus) takes SIGHUP as "reload" and would keep serving after its terminal is gone.
    """
    process = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True)

    def forward(_signum, _frame) -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # already gone

    previous = {number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return process.wait()
    except KeyboardInterrupt:
        forward(signal.SIGTERM, None)
        return process.wait(30)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


# ---------------------------------------------------------------------------------------------------
# Build, smoke test, promote, roll back


def build_bento(settings: Settings) -> dict[str, Any]:
    """Build the Bento from serving/bentofile.yaml into this data dir's BentoML home; returns its tag."""
    env = service_environment(settings, ServeOptions())
    started = time.perf_counter()
    result = subprocess.run([_bentoml(), "build", "-f", str(BENTOFILE), "--output", "tag", str(REPO_ROOT)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"bentoml build -f {BENTOFILE} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    tags = [line.split("__tag__:", 1)[1].strip() for line in result.stdout.splitlines() if "__tag__:" in line]
    if not tags:
        raise RuntimeError(f"bentoml build printed no tag:\n{result.stdout[-2000:]}")
    return {"bento_tag": tags[-1], "seconds": round(time.perf_counter() - started, 1)}


def _smoke_request(settings: Settings) -> dict[str, Any]:
    """A member and candidates that the newest feature tables know."""
    import pandas as pd

    def newest(table: str) -> pd.DataFrame:
        folders = sorted(settings.paths.feature_table(table).glob("dt=*"))
        if not folders:
            raise FileNotFoundError(f"{settings.paths.feature_table(table)}: no partitions to smoke-test with")
        return pd.read_parquet(folders[-1])

    members = newest("member_features")["member_id"].astype(int).tolist()
    items = newest("job_features")["item_id"].astype(int).tolist()
    return {"member_id": members[0], "candidates": items[:20], "k": 5}


def smoke_test(settings: Settings, bento_tag: str, port: int | None = None) -> dict[str, Any]:
    """Serve the built Bento, rank once for a known member, check the answer, stop it."""
    import httpx
    import math

    from serving.models import RANKER, resolve_tags

    request = _smoke_request(settings)
    started = time.perf_counter()
    with start_service(settings, ServeOptions(port=port or free_port()), bento=bento_tag) as service:
        response = httpx.post(f"{service.url}/rank", json=request, timeout=30)
        bad = httpx.post(f"{service.url}/rank", json={"member_id": request["member_id"], "candidates": []}, timeout=30)
    problems = []
    if response.status_code != 200:
        problems.append(f"POST /rank answered {response.status_code}: {response.text[:500]}")
    else:
        body = response.json()
        scores = [item["score"] for item in body["items"]]
        if len(scores) != request["k"] or not all(math.isfinite(s) and 0 <= s <= 1 for s in scores):
            problems.append(f"expected {request['k']} finite scores in [0, 1], got {scores}")
        if scores != sorted(scores, reverse=True):
            problems.append(f"scores are not in descending order: {scores}")
        if body["versions"]["models"][RANKER] != resolve_tags(settings)[RANKER]:
            problems.append(f"served ranker {body['versions']['models'][RANKER]} is not the promoted one")
    if bad.status_code != 400:
        problems.append(f"an empty candidate list answered {bad.status_code}, expected 400")
    if problems:
        raise RuntimeError(f"smoke test of {bento_tag} failed: " + "; ".join(problems))
    return {"bento_tag": bento_tag, "status": "passed", "request": request,
            "top": response.json()["items"][0], "seconds": round(time.perf_counter() - started, 1)}


def promote_bento(settings: Settings, bento_tag: str) -> dict[str, Any]:
    """serving.json: the Bento that serves is `bento_tag`; the one before it stays in history (rollback)."""
    from rankflow.stages.ranker import _write_serving, serving_state

    entry = serving_state(settings).get(BENTO_NAME, {})
    current, history = entry.get("tag"), list(entry.get("history", []))
    if current == bento_tag:
        return {"bento_tag": bento_tag, "status": "serving", "reason": "already serving"}
    _write_serving(settings, BENTO_NAME, bento_tag, [current, *history] if current else history)
    return {"bento_tag": bento_tag, "status": "serving", "previous": current}


def rollback(settings: Settings) -> dict[str, Any]:
    """The previous ranker serves again (running services reload it), and the previous Bento if there is one."""
    from rankflow.stages import ranker
    from rankflow.stages.ranker import _write_serving, serving_state

    result: dict[str, Any] = {"ranker": ranker.rollback(settings)}
    entry = serving_state(settings).get(BENTO_NAME, {})
    history = list(entry.get("history", []))
    if history:
        previous = history.pop(0)
        _write_serving(settings, BENTO_NAME, previous, history)
        result["bento"] = {"bento_tag": previous, "rolled_back": entry.get("tag")}
    return result


def publish(settings: Settings) -> dict[str, Any]:
    """build_bento -> smoke_test -> promote_bento (what the publish DAG runs)."""
    built = build_bento(settings)
    smoke = smoke_test(settings, built["bento_tag"])
    return {"build": built, "smoke_test": smoke, "promote": promote_bento(settings, built["bento_tag"])}
