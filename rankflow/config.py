"""The one typed configuration of rankflow, read once at the boundary and passed down.

Precedence: explicit CLI flags > environment (RANKFLOW_*) > `<data_dir>/rankflow.yaml` > defaults.
Only `load_settings()` reads the environment; nothing deeper does.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DATA_DIR = Path("data")
DEFAULT_START_DATE = date(2026, 1, 1)


@dataclass(frozen=True)
class GeneratorSettings:
    """Size and seed of the synthetic job marketplace (`rankflow generate`)."""

    members: int = 4_000
    jobs: int = 1_000
    days: int = 10
    impressions_per_day: int = 20_000
    seed: int = 7
    start_date: date = DEFAULT_START_DATE


@dataclass(frozen=True)
class Settings:
    """Everything a stage needs to know about where data lives and which backends to use."""

    data_dir: Path = DEFAULT_DATA_DIR
    spark_master: str = "local[*]"
    # "sqlite" (embedded default) or a redis URL such as "redis://localhost:6379/0".
    online_store: str = "sqlite"
    # "file" (Feast's file/dask offline store, default) or "spark".
    offline_store: str = "file"
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)

    def with_overrides(self, **overrides: Any) -> "Settings":
        """A copy with the non-None overrides applied (CLI flags left unset are None)."""
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = Path(clean["data_dir"])
        return dataclasses.replace(self, **clean)

    @property
    def paths(self) -> "DataPaths":
        from rankflow.paths import DataPaths

        return DataPaths(self.data_dir)

    def scheduled_days(self) -> tuple[date, date]:
        """First and last logical day the DAGs cover by default: the raw zone's first and last event days
        when it has any (ingested data, or generated with other flags than rankflow.yaml's), else the
        generator's configured range."""
        from rankflow.paths import partition_days

        days = partition_days(self.paths.raw_table("events"))
        if days:
            return days[0], days[-1]
        start = self.generator.start_date
        return start, start + timedelta(days=self.generator.days - 1)


_ENV_KEYS = {
    "RANKFLOW_DATA_DIR": "data_dir",
    "RANKFLOW_SPARK_MASTER": "spark_master",
    "RANKFLOW_ONLINE_STORE": "online_store",
    "RANKFLOW_OFFLINE_STORE": "offline_store",
}


def load_settings(data_dir: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the Settings once: defaults, then `<data_dir>/rankflow.yaml`, then env, then flags."""
    env = {field_name: os.environ[key] for key, field_name in _ENV_KEYS.items() if key in os.environ}
    base_dir = Path(data_dir or env.get("data_dir") or DEFAULT_DATA_DIR)
    values: dict[str, Any] = {}
    config_file = base_dir / "rankflow.yaml"
    if config_file.exists():
        loaded = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file}: expected a mapping of settings, got {type(loaded).__name__}")
        unknown = set(loaded) - {f.name for f in dataclasses.fields(Settings)}
        if unknown:
            raise ValueError(f"{config_file}: unknown setting(s) {sorted(unknown)}")
        if "generator" in loaded:
            loaded["generator"] = GeneratorSettings(**loaded["generator"])
        values.update(loaded)
    values.update(env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["data_dir"] = base_dir
    return Settings().with_overrides(**values)
