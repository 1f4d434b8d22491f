"""The one SparkSession of a process, built from Settings and reused by every feature job.

Starting a JVM costs seconds, so a process keeps a single session. The defaults are tuned for a
small machine (2 cores): few shuffle partitions (a day is thousands of rows, not billions), no UI,
a modest driver heap, UTC everywhere so that "day D" means the same thing in Spark and in pandas.
Any master URL (`spark://...`, `k8s://...`) comes from `Settings.spark_master`; nothing else changes.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from rankflow.config import Settings


LOG_CONFIG = Path(__file__).resolve().parent / "log4j2.properties"  # the JVM logs errors only


@dataclass(frozen=True)
class SparkTuning:
    """Session options; the defaults run a default-sized day in seconds on 2 cores."""

    shuffle_partitions: int = 4
    driver_memory: str | None = None  # None: Settings.spark_driver_memory (rankflow.yaml, RANKFLOW_SPARK_DRIVER_MEMORY)
    app_name: str = "rankflow-features"


_session: SparkSession | None = None


def spark_session(settings: Settings, tuning: SparkTuning = SparkTuning()) -> SparkSession:
    """Return the process's SparkSession, starting it on first use."""
    global _session
    if _session is not None and _session.sparkContext._jsc is not None:
        return _session
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName(tuning.app_name)
        .config("spark.sql.shuffle.partitions", str(tuning.shuffle_partitions))
        .config("spark.default.parallelism", str(tuning.shuffle_partitions))
        .config("spark.driver.memory", tuning.driver_memory or settings.spark_driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", f"-Duser.timezone=UTC -Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Tiny inputs: adaptive execution only adds planning time here.
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # A raw table has a file per day: list a few hundred on the driver instead of in a job of their own.
        .config("spark.sql.sources.parallelPartitionDiscovery.threshold", "512")
    )
    _session = builder.getOrCreate()
    _session.sparkContext.setLogLevel("ERROR")
    return _session


def stop_spark_session(wait_s: float = 60.0) -> None:
    """Stop the process's session and end its JVM; the next spark_session() starts a new one.

    `SparkSession.stop()` alone leaves the JVM running, heap and all, until Python exits (2.8 GB resident after
    a 100x day's build), so a JVM this process started is told to exit too: it does when its stdin closes
    (PySpark's gateway watches it), and is killed if it has not after `wait_s` seconds. A JVM that started this
    process (spark-submit) is left alone. The session is forgotten even when stopping it fails (a JVM that died).
    """
    global _session
    from pyspark import SparkContext

    try:
        if _session is not None:
            _session.stop()
    finally:
        _session = None
        # What a failed stop (a JVM that died) leaves behind would be reused by the next getOrCreate.
        SparkSession._instantiatedSession = None
        SparkSession._activeSession = None
        with SparkContext._lock:
            SparkContext._active_spark_context = None
            gateway = SparkContext._gateway
            process = getattr(gateway, "proc", None)
            if process is not None:
                SparkContext._gateway, SparkContext._jvm = None, None
        if process is not None:
            try:
                gateway.shutdown()  # close py4j's connections first: nothing talks to the JVM any more
            finally:
                if process.stdin is not None:
                    process.stdin.close()
                try:
                    process.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
