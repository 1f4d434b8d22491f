"""The embedded Airflow: start and stop api-server, scheduler, dag-processor and triggerer locally.

Like `airflow standalone`, but owned by rankflow and kept under the data directory:

    <data_dir>/airflow/airflow.cfg        generated config (AIRFLOW_HOME); airflow.db for SQLite
    <data_dir>/airflow/secrets.json       jwt_secret + api secret_key, shared by all components
    <data_dir>/airflow/passwords.json     the simple auth manager's admin password
    <data_dir>/run/airflow/<name>.pid     one per component: pid and process start time
    <data_dir>/run/airflow/<name>.log     its stdout and stderr

Each component runs in its own session (setsid), so `stop()` signals exactly the process group
it started, task subprocesses included, and nothing else. SQLite is the zero-setup default
(LocalExecutor, one task at a time because SQLite serialises writers); PostgreSQL
(`postgresql://...`) is the real metadata DB: the database is created when missing.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from rankflow.logs import get_logger
from rankflow.paths import DataPaths, atomic_write_bytes

log = get_logger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
ADMIN_USER = "admin"
REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "dags"


@dataclass(frozen=True)
class AirflowOptions:
    """How to run the embedded Airflow."""

    data_dir: Path
    # None: SQLite at <data_dir>/airflow/airflow.db. Else e.g. postgresql://postgres@127.0.0.1:5432/rankflow
    db_url: str | None = None
    port: int = 8080
    # Last logical day the schedules create runs for; None: open-ended (a production deployment).
    end_date: date | None = None
    # True: no login (simple auth manager "all admins"); for local demos and headless screenshots.
    open_access: bool = False
    gpu_pool: str = "gpu"
    gpu_pool_slots: int = 1
    # Task slots of the LocalExecutor. Each task may start Spark, so keep it to the cores there are.
    parallelism: int = 2
    # Retries of a failed task (exponential backoff from 30 s); tests set 0 so a failure shows at once.
    retries: int = 3
    # Training-set days before the first meta-training (and meta embeddings) of a fresh data dir.
    meta_min_history_days: int = 3

    @property
    def home(self) -> Path:
        return Path(self.data_dir).resolve() / "airflow"

    @property
    def run_dir(self) -> Path:
        return DataPaths(Path(self.data_dir).resolve()).run / "airflow"

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def sql_alchemy_conn(self) -> str:
        if self.db_url is None:
            return f"sqlite:///{self.home / 'airflow.db'}"
        if self.db_url.startswith("postgresql+psycopg2://"):
            return self.db_url
        if not self.db_url.startswith("postgresql://"):
            raise ValueError(f"--db: expected postgresql://user@host:port/database, got {self.db_url!r}")
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the installed driver is psycopg2.
        return "postgresql+psycopg2://" + self.db_url.removeprefix("postgresql://")


@dataclass(frozen=True)
class AirflowInfo:
    """What `start()` hands back: where the UI is and how to log in."""

    url: str
    username: str
    password: str | None  # None when open_access
    home: Path
    pids: dict[str, int]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _persistent_secret(path: Path, key: str, make) -> str:
    """A secret generated once and kept, so restarts keep sessions and tokens valid."""
    values = _read_json(path)
    if key not in values:
        values[key] = make()
        atomic_write_bytes(path, (json.dumps(values, indent=2) + "\n").encode())
        path.chmod(0o600)
    return values[key]


def write_config(options: AirflowOptions) -> dict[str, str]:
    """Write <data_dir>/airflow/airflow.cfg and return the environment the components run with."""
    home = options.home
    home.mkdir(parents=True, exist_ok=True)
    secrets_file = home / "secrets.json"
    jwt_secret = _persistent_secret(secrets_file, "jwt_secret", lambda: secrets.token_urlsafe(48))
    secret_key = _persistent_secret(secrets_file, "secret_key", lambda: secrets.token_urlsafe(32))
    # The simple auth manager reads {user: password} from this file and only generates missing ones.
    password = _persistent_secret(home / "passwords.json", ADMIN_USER, lambda: secrets.token_urlsafe(12))
    sections = {
        "core": {
            "dags_folder": str(DAGS_FOLDER),
            "load_examples": "False",
            "executor": "LocalExecutor",
            "parallelism": str(options.parallelism),
            "dags_are_paused_at_creation": "False",
            "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "simple_auth_manager_users": f"{ADMIN_USER}:admin",
            "simple_auth_manager_passwords_file": str(home / "passwords.json"),
            "simple_auth_manager_all_admins": str(options.open_access),
            "execution_api_server_url": f"http://127.0.0.1:{options.port}/execution/",
        },
        "database": {"sql_alchemy_conn": options.sql_alchemy_conn},
        "api": {
            "host": "127.0.0.1",
            "port": str(options.port),
            "base_url": options.url,
            "workers": "1",
            "secret_key": secret_key,
        },
        "api_auth": {"jwt_secret": jwt_secret},
        "scheduler": {"create_cron_data_intervals": "True"},
        # DAG files change rarely here; re-list the folder every minute instead of every 5.
        "dag_processor": {"refresh_interval": "60"},
        "logging": {"base_log_folder": str(home / "logs")},
        "rankflow": {
            "data_dir": str(Path(options.data_dir).resolve()),
            "end_date": options.end_date.isoformat() if options.end_date else "",
            "gpu_pool": options.gpu_pool,
            "gpu_queue": "default",
            "retries": str(options.retries),
            "meta_min_history_days": str(options.meta_min_history_days),
        },
    }
    lines = ["# Generated by `rankflow airflow up`; edits are overwritten on the next `up`."]
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
    atomic_write_bytes(home / "airflow.cfg", ("\n".join(lines) + "\n").encode())
    (home / "airflow.cfg").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW_CONFIG": str(home / "airflow.cfg"), "PYTHONUNBUFFERED": "1"})
    return env


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def ensure_postgres_database(db_url: str) -> bool:
    """Create the URL's database when it does not exist; True if it was created."""
    from urllib.parse import urlsplit

    import psycopg2

    parts = urlsplit(db_url.replace("postgresql+psycopg2://", "postgresql://"))
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError(f"--db {db_url!r}: name the database, e.g. postgresql://postgres@127.0.0.1:5432/rankflow")
    admin_url = parts._replace(path="/postgres").geturl()
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone():
                return False
            cursor.execute(f'CREATE DATABASE "{name}"')
            return True
    finally:
        connection.close()


def _run_airflow(args: list[str], env: dict[str, str], log_file: Path, timeout: float) -> None:
    with log_file.open("ab") as out:
        result = subprocess.run([_airflow_bin(), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`airflow {' '.join(args)}` failed (exit {result.returncode}); see {log_file}:\n{tail}")


def _process_start_time(pid: int) -> float | None:
    """Start time of a running process; None when it is gone (or a zombie waiting to be reaped)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def _group_members(group_id: int) -> list[int]:
    """Live processes of one process group (a component and the task processes it forked)."""
    import psutil

    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == group_id and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _alive(record: dict) -> bool:
    """True if the recorded process still runs and is the same process (pids get reused)."""
    started = _process_start_time(record["pid"])
    return started is not None and abs(started - record["started"]) < 1.0


def running_components(data_dir: Path) -> dict[str, dict]:
    """Components whose pid file names a live process: name -> {pid, started, log}."""
    run_dir = AirflowOptions(data_dir).run_dir
    found = {}
    for name in COMPONENTS:
        record = _read_json(run_dir / f"{name}.pid")
        if record and _alive(record):
            found[name] = record
    return found


def health(url: str, timeout: float = 5.0) -> dict | None:
    """The api-server's /api/v2/monitor/health JSON, or None when it does not answer."""
    import httpx

    try:
        response = httpx.get(f"{url}/api/v2/monitor/health", timeout=timeout)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _healthy(report: dict | None) -> bool:
    if not report:
        return False
    needed = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all((report.get(part) or {}).get("status") == "healthy" for part in needed)


def _wait_for_api(options: AirflowOptions, deadline: float) -> None:
    while health(options.url) is None:
        if "api-server" not in running_components(options.data_dir) or time.monotonic() > deadline:
            stop(options.data_dir)
            raise RuntimeError(f"the api-server did not come up; see {options.run_dir}/api-server.log")
        time.sleep(1.0)


def start(options: AirflowOptions, wait_s: float = 240.0) -> AirflowInfo:
    """Configure, migrate the metadata DB, start the four components and wait until healthy."""
    if running_components(options.data_dir):
        raise RuntimeError(f"Airflow is already running for {options.data_dir}: `rankflow airflow down` first")
    options.run_dir.mkdir(parents=True, exist_ok=True)
    if options.db_url is not None and ensure_postgres_database(options.sql_alchemy_conn):
        log.info("created PostgreSQL database for %s", options.db_url)
    env = write_config(options)
    setup_log = options.run_dir / "setup.log"
    _run_airflow(["db", "migrate"], env, setup_log, timeout=600)
    _run_airflow(["pools", "set", options.gpu_pool, str(options.gpu_pool_slots), "ranker training on GPU"],
                 env, setup_log, timeout=120)
    pids = {}
    for name in COMPONENTS:
        log_file = options.run_dir / f"{name}.log"
        with log_file.open("ab") as out:
            process = subprocess.Popen([_airflow_bin(), name], env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=options.home)
        record = {"pid": process.pid, "started": _process_start_time(process.pid) or time.time(),
                  "log": str(log_file)}
        atomic_write_bytes(options.run_dir / f"{name}.pid", json.dumps(record).encode())
        pids[name] = process.pid
        if name == "api-server":
            # Task processes report to the api-server's execution API: a scheduler that starts
            # first queues tasks that fail to connect and burn a retry.
            _wait_for_api(options, deadline=time.monotonic() + wait_s)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _healthy(health(options.url)):
            break
        dead = [name for name in COMPONENTS if name not in running_components(options.data_dir)]
        if dead:
            stop(options.data_dir)
            raise RuntimeError(f"Airflow component(s) {dead} exited during start; see {options.run_dir}/<name>.log")
        time.sleep(2.0)
    else:
        stop(options.data_dir)
        raise TimeoutError(f"Airflow not healthy after {wait_s:.0f} s; see logs in {options.run_dir}")
    password = None if options.open_access else _read_json(options.home / "passwords.json")[ADMIN_USER]
    return AirflowInfo(url=options.url, username=ADMIN_USER, password=password, home=options.home, pids=pids)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of a process; task runners call setsid, so they leave the component's group."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _signal(pids: list[int], groups: list[int], sig: int) -> None:
    for group_id in groups:
        try:
            os.killpg(group_id, sig)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _still_running(pids: list[int], groups: list[int]) -> list[int]:
    return [pid for pid in pids if _process_start_time(pid) is not None] + \
        [pid for group_id in groups for pid in _group_members(group_id)]


def stop(data_dir: Path, grace_s: float = 30.0) -> list[str]:
    """Stop the components `start()` started for this data dir, with their task processes; return their names.

    Each component runs in its own session (setsid made its pid the group id); the task processes
    a worker forks start sessions of their own, so they are found as descendants, before signalling.
    """
    run_dir = AirflowOptions(data_dir).run_dir
    stopped, groups, descendants = [], [], []
    for name in COMPONENTS:
        record = _read_json(run_dir / f"{name}.pid")
        if record and _alive(record):
            stopped.append(name)
            groups.append(record["pid"])
            descendants += _descendants(record["pid"])
    _signal(descendants, groups, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _still_running(descendants, groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _still_running(descendants, groups):  # still there after the grace period (a hung task, say)
        _signal(_still_running(descendants, []), groups, signal.SIGKILL)
    for name in COMPONENTS:
        (run_dir / f"{name}.pid").unlink(missing_ok=True)
    return stopped
