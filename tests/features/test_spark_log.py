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


def test_stopping_the_session_ends_its_jvm_and_the_next_session_starts_a_new_one(tmp_path):
    """SparkSession.stop() alone leaves the JVM (its heap) running until Python exits: stop_spark_session ends
    it, without a py4j error on the way, and a later spark_session() works in the same process."""
    script = textwrap.dedent(f"""
        import os
        from features.spark.session import spark_session, stop_spark_session
        from pyspark import SparkContext
        from rankflow.config import Settings

        def java_children():
            found = []
            for pid in os.listdir("/proc"):
                try:
                    with open(f"/proc/{{pid}}/stat") as stat:
                        parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                    with open(f"/proc/{{pid}}/cmdline", "rb") as cmdline:
                        words = cmdline.read().split(b"\\0")
                except (OSError, ValueError, IndexError):
                    continue
                if parent == os.getpid() and words and words[0].endswith(b"java"):
                    found.append(int(pid))
            return found

        settings = Settings(data_dir={str(tmp_path)!r})
        frame = spark_session(settings).range(5)
        assert frame.count() == 5
        first = java_children()
        assert len(first) == 1, first
        process = SparkContext._gateway.proc
        stop_spark_session()
        assert process.poll() is not None, "the JVM is still running"
        assert java_children() == []
        del frame
        import gc; gc.collect()
        assert spark_session(settings).range(7).count() == 7
        second = java_children()
        assert len(second) == 1 and second != first, (first, second)
        stop_spark_session()
        assert java_children() == []

        # A JVM that died under the session: stopping may raise, but forgets it, and the next session works.
        spark_session(settings).range(2).count()
        SparkContext._gateway.proc.kill()
        SparkContext._gateway.proc.wait()
        try:
            stop_spark_session()
        except Exception:
            pass
        assert spark_session(settings).range(3).count() == 3
        stop_spark_session()
        assert java_children() == []
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
    first_part = done.stderr.split("Exception while sending command")[0]  # the killed JVM's py4j noise after it
    assert "Traceback" not in first_part and "Exception ignored" not in first_part, done.stderr
