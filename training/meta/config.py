"""One typed configuration of the meta-learning stage, saved with every meta-initialisation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from training.meta.adapt import InnerLoopConfig
from training.meta.maml import MetaTrainConfig
from training.meta.subnetwork import SubNetworkConfig
from training.meta.tasks import TaskConfig


@dataclass(frozen=True)
class MetaConfig:
    """Sub-network shape, task sampling, inner loop and outer loop, with defaults that run."""

    subnetwork: SubNetworkConfig = field(default_factory=SubNetworkConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    inner: InnerLoopConfig = field(default_factory=InnerLoopConfig)
    outer: MetaTrainConfig = field(default_factory=MetaTrainConfig)
    max_bag_size: int = 16
    # Meta-training uses the `query_days` days before the logical date as query days (one task per active
    # member per day), each with `tasks.window_days` of history before it as the support window.
    query_days: int = 7

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetaConfig":
        def build(kind, values):
            values = dict(values)
            for f in dataclasses.fields(kind):
                if f.name in values and isinstance(values[f.name], list):
                    values[f.name] = tuple(values[f.name])
            unknown = set(values) - {f.name for f in dataclasses.fields(kind)}
            if unknown:
                raise ValueError(f"meta config: unknown {kind.__name__} field(s) {sorted(unknown)}")
            return kind(**values)

        return cls(subnetwork=build(SubNetworkConfig, data.get("subnetwork", {})),
                   tasks=build(TaskConfig, data.get("tasks", {})),
                   inner=build(InnerLoopConfig, data.get("inner", {})),
                   outer=build(MetaTrainConfig, data.get("outer", {})),
                   max_bag_size=int(data.get("max_bag_size", 16)),
                   query_days=int(data.get("query_days", 7)))
