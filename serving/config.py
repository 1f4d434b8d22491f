"""What the ranking service is allowed to do: request bounds, the feature-store deadline, batching.

One typed config with defaults that run, read once when the service starts (`load_serving_config`), from
`<data_dir>/serving.yaml` when present and then from the `RANKFLOW_SERVING_*` variables that
`rankflow serve` sets for the service processes it starts (flags -> environment is the only way to reach
BentoML's worker processes). Nothing else in serving/ reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping

from rankflow.config import Settings, read_yaml_settings

ENV_PREFIX = "RANKFLOW_SERVING_"
CONFIG_FILE = "serving.yaml"


@dataclass(frozen=True)
class ServingConfig:
    """Bounds and timings of POST /rank."""

    max_candidates: int = 1_000          # longer candidate lists are refused with a 4xx naming `candidates`
    default_k: int = 10                  # top-k returned when the request gives no k
    feature_deadline_ms: float = 50.0    # online reads slower than this -> default features, `degraded`
    candidate_cache_seconds: float = 5.0  # job features are shared by every member: kept this long in memory
    candidate_cache_size: int = 100_000
    adaptive_batching: bool = True       # score through the batchable API (False: one call per request)
    reload_check_seconds: float = 5.0    # how often models/serving.json is looked at for a new version
    # BentoML's per-request OpenTelemetry spans and access-log line cost ~1-2 ms of CPU per request on the
    # 2-core box (profiled); off for POST /rank unless asked for (our own metrics and logs stay on)
    trace_requests: bool = False
    access_log: bool = False

    def __post_init__(self) -> None:
        if self.max_candidates < 1:
            raise ValueError(f"serving config: max_candidates must be >= 1, got {self.max_candidates}")
        if self.default_k < 1:
            raise ValueError(f"serving config: default_k must be >= 1, got {self.default_k}")
        if not self.feature_deadline_ms > 0:
            raise ValueError(f"serving config: feature_deadline_ms must be > 0, got {self.feature_deadline_ms}")


def _coerce(field: dataclasses.Field, value: Any, source: str) -> Any:
    """`value` as the field's type; a ValueError names the field and where the value came from."""
    kind = type(field.default)
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{source}: serving setting {field.name}: expected a boolean, got {value!r}")
        return value.lower() in ("1", "true", "yes", "on")
    if kind is not bool and isinstance(value, bool) or kind is bool and not isinstance(value, (bool, int)):
        raise ValueError(f"{source}: serving setting {field.name}: expected {kind.__name__}, got {value!r}")
    try:
        coerced = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: serving setting {field.name}: expected {kind.__name__}, got {value!r}") from None
    if kind is int and isinstance(value, float) and coerced != value:
        raise ValueError(f"{source}: serving setting {field.name}: expected a whole number, got {value!r}")
    return coerced


def load_serving_config(settings: Settings, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServingConfig:
    """Defaults < <data_dir>/serving.yaml < RANKFLOW_SERVING_<FIELD> < explicit overrides.

    A value that cannot be used raises ValueError naming the file (and line) or variable and the setting.
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(ServingConfig)}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = settings.data_dir / CONFIG_FILE
    if path.exists():
        loaded, lines = read_yaml_settings(path)
        unknown = set(loaded) - set(fields)
        if unknown:
            raise ValueError(f"{path}: unknown serving setting(s) {sorted(unknown)}; known: {sorted(fields)}")
        values.update(loaded)
        sources.update({name: f"{path}, line {lines[name]}" if name in lines else str(path) for name in loaded})
    for name in fields:
        if (key := ENV_PREFIX + name.upper()) in environ:
            values[name] = environ[key]
            sources[name] = f"environment variable {key}"
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    sources.update({name: f"the override of {name}" for name in given})
    coerced = {name: _coerce(fields[name], value, sources[name]) for name, value in values.items()}
    try:
        return ServingConfig(**coerced)
    except ValueError as error:
        named = [sources[name] for name in coerced if name in str(error)]
        raise ValueError(f"{named[0]}: {error}" if named else str(error)) from None


def serving_environment(config: ServingConfig) -> dict[str, str]:
    """The environment that carries `config` into the service processes (`rankflow serve`)."""
    return {ENV_PREFIX + f.name.upper(): str(getattr(config, f.name)) for f in dataclasses.fields(ServingConfig)}
