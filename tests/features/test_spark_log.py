"""Starting Spark prints nothing but errors (Airflow shows a task's stderr at ERROR level); the JVM's own
"WARNING: Using incubator modules" line, printed before any logging starts, is the one exception."""

import subprocess
import sys
import textwrap


def test_the_spark_jvm_starts_without_its_default_profile_and_warn_lines(tmp_path):
    script = textwrap.dedent(f"""
        from features.spark.session import spark_session, stop_spark_session
        from rankflow.config import Settings
        spark = spark_session(Settings(data_dir={str(tmp_path)!r}))
        assert spark.range(3).count() == 3
        spark._jvm.org.apache.logging.log4j.LogManager.getLogger("rankflow.test").warn("a warning from the JVM")
        spark._jvm.org.apache.logging.log4j.LogManager.getLogger("rankflow.test").error("an error from the JVM")
        stop_spark_session()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "an error from the JVM" in done.stderr  # errors still reach stderr
    assert "a warning from the JVM" not in done.stderr
    assert "default log4j profile" not in done.stderr and " WARN " not in done.stderr, done.stderr
    assert "Setting default log level" not in done.stderr, done.stderr
