"""The one typed configuration of rankflow, read once at the boundary and passed down.

Precedence: explicit CLI flags > environment (RANKFLOW_*) > `<data_dir>/rankflow.yaml` > defaults.
Only `load_settings()` reads the environment; nothing deeper does.
"""

from __future__ import annotations

import dataclasses
import os
import re
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
    # The Spark driver's heap (spark.driver.memory: "2g", "8g", "512m"). In local mode the driver runs every task,
    # so a day of millions of events needs more than the default (a 2M-event day peaked near 10 GB in all).
    spark_driver_memory: str = "2g"
    # "sqlite" (embedded default) or a redis URL such as "redis://localhost:6379/0".
    online_store: str = "sqlite"
    # "file" (Feast's file/dask offline store, default) or "spark".
    offline_store: str = "file"
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    # Retention of the daily GLMix states (models/glmix/dt=D and their BentoML models): keep the newest N after
    # each `personalise` day; None keeps them all. A day whose prior state was deleted cannot be re-run.
    glmix_keep_days: int | None = None

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
    "RANKFLOW_SPARK_DRIVER_MEMORY": "spark_driver_memory",
    "RANKFLOW_ONLINE_STORE": "online_store",
    "RANKFLOW_OFFLINE_STORE": "offline_store",
    "RANKFLOW_GLMIX_KEEP_DAYS": "glmix_keep_days",
}
OFFLINE_STORES = ("file", "spark")


class ConfigError(ValueError):
    """A configuration value (rankflow.yaml, a RANKFLOW_* variable) that cannot be used; the message names where."""


def check_memory_size(value: str) -> str:
    """A JVM memory size such as '2g', '512m' or '8G'; a ValueError says what was expected."""
    import re

    if not re.fullmatch(r"[1-9][0-9]*[kKmMgGtT]?", value):
        raise ValueError(f"{value!r}: expected a size such as 2g, 8g or 512m")
    return value


def check_online_store(value: str) -> str:
    """'sqlite', or a Redis URL redis[s]://[:password@]host[:port][/db]; a ValueError says what was expected."""
    from urllib.parse import urlparse

    if value == "sqlite":
        return value
    parsed = urlparse(value)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"{value!r}: expected 'sqlite' or a Redis URL such as redis://localhost:6379/0")
    try:
        parsed.port
    except ValueError:
        raise ValueError(f"{value!r}: the port must be a number") from None
    db = (parsed.path or "/").strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{value!r}: the Redis database must be a number, got {db!r}")
    return value


def check_offline_store(value: str) -> str:
    if value not in OFFLINE_STORES:
        raise ValueError(f"{value!r}: expected one of {', '.join(map(repr, OFFLINE_STORES))}")
    return value


def check_keep_days(value: Any) -> int:
    """A number of days to keep: a whole number >= 1 (an int, or its digits as text); a ValueError says so."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{value!r}: expected a whole number of days >= 1")
    return value


def redacted(url: str) -> str:
    """A store URL fit for a message: its password replaced by ***."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def read_yaml_settings(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML file of settings (name: value) and the line of each name; a ConfigError names the file, the
    line and column, and what was expected (rankflow.yaml, serving.yaml)."""
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        started = ""
        if context:
            opened = context_mark is not None and (context_mark.line, context_mark.column) != (mark.line, mark.column)
            started = (f" ({context} that starts on line {context_mark.line + 1}, column {context_mark.column + 1})"
                       if opened else f" ({context})")
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}{started}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (name: value), got {type(loaded).__name__}")
    lines = {key.value: key.start_mark.line + 1 for key, _ in root.value} if isinstance(root, yaml.MappingNode) else {}
    return loaded, lines


def _read_config_file(config_file: Path) -> dict[str, Any]:
    """The settings of a rankflow.yaml, checked; a ConfigError names the file, the line and what was expected."""
    loaded, lines = read_yaml_settings(config_file)

    def at(key: str) -> str:
        return f"{config_file}, line {lines[key]}" if key in lines else str(config_file)

    known = {f.name for f in dataclasses.fields(Settings)}
    for key in loaded:
        if key not in known:
            raise ConfigError(f"{at(key)}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
    for key in ("spark_master", "spark_driver_memory", "online_store", "offline_store"):
        if key in loaded and not isinstance(loaded[key], str):
            raise ConfigError(f"{at(key)}: {key} must be a string, got {loaded[key]!r}")
    for key, check in (("online_store", check_online_store), ("offline_store", check_offline_store),
                       ("spark_driver_memory", check_memory_size)):
        if key in loaded:
            try:
                check(loaded[key])
            except ValueError as error:
                raise ConfigError(f"{at(key)}: {key} {error}") from None
    if loaded.get("glmix_keep_days") is not None:
        if isinstance(loaded["glmix_keep_days"], str):
            raise ConfigError(f"{at('glmix_keep_days')}: glmix_keep_days must be a number, got "
                              f"{loaded['glmix_keep_days']!r}")
        try:
            check_keep_days(loaded["glmix_keep_days"])
        except ValueError as error:
            raise ConfigError(f"{at('glmix_keep_days')}: glmix_keep_days {error}") from None
    if "generator" in loaded:
        loaded["generator"] = _generator_settings(loaded["generator"], at("generator"))
    return loaded


def _generator_settings(values: Any, where: str) -> GeneratorSettings:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: generator must be a mapping of {', '.join(GeneratorSettings.__annotations__)}")
    fields = {f.name: f for f in dataclasses.fields(GeneratorSettings)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown generator setting {key!r}; known: {', '.join(fields)}")
        expected = type(fields[key].default)
        if not isinstance(value, expected) or isinstance(value, bool):
            kind = "a date (YYYY-MM-DD)" if expected is date else "an integer"
            raise ConfigError(f"{where}: generator.{key} must be {kind}, got {value!r}")
    return GeneratorSettings(**values)


def load_settings(data_dir: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the Settings once: defaults, then `<data_dir>/rankflow.yaml`, then env, then flags.

    A value that cannot be used raises ConfigError naming the file and line, or the variable.
    """
    env = {field_name: os.environ[key] for key, field_name in _ENV_KEYS.items() if key in os.environ}
    for key, check in (("RANKFLOW_ONLINE_STORE", check_online_store), ("RANKFLOW_OFFLINE_STORE", check_offline_store),
                       ("RANKFLOW_SPARK_DRIVER_MEMORY", check_memory_size)):
        if key in os.environ:
            try:
                check(os.environ[key])
            except ValueError as error:
                raise ConfigError(f"environment variable {key}: {error}") from None
    if "glmix_keep_days" in env:
        try:
            env["glmix_keep_days"] = check_keep_days(env["glmix_keep_days"])
        except ValueError as error:
            raise ConfigError(f"environment variable RANKFLOW_GLMIX_KEEP_DAYS: {error}") from None
    base_dir = Path(data_dir or env.get("data_dir") or DEFAULT_DATA_DIR)
    values: dict[str, Any] = {}
    config_file = base_dir / "rankflow.yaml"
    if config_file.exists():
        values.update(_read_config_file(config_file))
    values.update(env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["data_dir"] = base_dir
    return Settings().with_overrides(**values)
