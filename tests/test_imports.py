"""`kernels` and `training` go to GPU machines alone: they must import without Airflow, Spark, Feast,
BentoML or Great Expectations (design.md, "Layering").

Each check runs in a fresh interpreter with a meta-path hook that records and refuses any import of those
packages, then imports every module under the package. A guarded `try: import feast` counts too: the
attempt alone means the module reaches for a layer above it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("airflow", "pyspark", "feast", "bentoml", "great_expectations")

CHECKER = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys, traceback

    FORBIDDEN = set(json.loads(sys.argv[1]))
    attempts = []

    class RefuseForbidden(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in FORBIDDEN:
                attempts.append({"module": name, "imported_from": current[0]})
                raise ImportError(f"{name} must not be imported by this package (tests/test_imports.py)")
            return None

    sys.meta_path.insert(0, RefuseForbidden())
    current = [None]
    imported, failures = [], []
    for package in sys.argv[2:]:
        names = [package]
        root = importlib.import_module(package)
        names += [info.name for info in pkgutil.walk_packages(root.__path__, package + ".",
                                                              onerror=lambda name: None)]
        for name in names:
            current[0] = name
            try:
                importlib.import_module(name)
                imported.append(name)
            except BaseException:
                failures.append({"module": name, "error": traceback.format_exc(limit=3)})
    print(json.dumps({"imported": imported, "attempts": attempts, "failures": failures}))
""")


def check_imports(packages: list[str], extra_path: Path | None = None) -> dict:
    path = [str(extra_path)] if extra_path else []
    env_path = ":".join(path + [str(REPO_ROOT)])
    result = subprocess.run([sys.executable, "-c", CHECKER, json.dumps(FORBIDDEN), *packages],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": env_path})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["kernels", "training"])
def test_package_imports_without_the_orchestration_stack(package):
    report = check_imports([package])
    assert report["attempts"] == [], f"{package} imports a layer above it: {report['attempts']}"
    assert report["failures"] == [], f"modules under {package} failed to import: {report['failures']}"
    assert package in report["imported"]


def test_the_check_catches_a_forbidden_import(tmp_path):
    package = tmp_path / "leaky"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "model.py").write_text("try:\n    import feast.types\nexcept ImportError:\n    pass\n")
    report = check_imports(["leaky"], extra_path=tmp_path)
    assert report["attempts"] == [{"module": "feast", "imported_from": "leaky.sub.model"}]
