"""Request and response shapes of POST /rank: pydantic models, so a bad request is a 4xx naming the field.

Ids are the integers of the raw zone (docs/contracts.md: ids are int64). JSON integers and strings
holding an integer are both accepted ("42" and 42 are the same job); anything else (floats, NaN,
Infinity, booleans, non-numeric strings, ids outside int64) is refused with the field's position, e.g.
`candidates.3`. Candidate lists must be non-empty, without duplicates, and at most `max_candidates`
long (ServingConfig; the service builds its request model with `rank_request_model`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def parse_id(value: Any) -> int:
    """An entity id from JSON: an integer, or a string of one."""
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:  # the common case, first: one check per id
        return value
    if isinstance(value, bool):
        raise ValueError("expected an integer id, got a boolean")
    if isinstance(value, float):
        what = "a non-finite number" if not math.isfinite(value) else f"the float {value!r}"
        raise ValueError(f"expected an integer id, got {what}")
    if isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-")
        if not (digits.isascii() and digits.isdigit()):  # "１２" or "٣" pass str.isdigit; int() would take them
            raise ValueError(f"expected an integer id, got the string {value!r}")
        value = int(text)
    if not isinstance(value, int):
        raise ValueError(f"expected an integer id, got {type(value).__name__}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"id {value} is outside the int64 range of ingested ids")
    return value


def parse_k(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


EntityId = Annotated[int, BeforeValidator(parse_id)]


class RankRequest(BaseModel):
    """Rank `candidates` (job ids) for `member_id`; return the best `k` (default: ServingConfig.default_k)."""

    model_config = ConfigDict(extra="forbid")
    max_candidates: ClassVar[int] = 1_000

    member_id: EntityId
    candidates: list[EntityId] = Field(min_length=1)
    k: Annotated[int | None, BeforeValidator(parse_k), Field(ge=1)] = None
    explore: Annotated[bool, Field(strict=True, description=(
        "Thompson sampling: score with one draw of the member's and each job's random effects from their "
        "posteriors instead of the means (exploration traffic)."))] = False

    @field_validator("candidates")
    @classmethod
    def _bounded_and_distinct(cls, candidates: list[int]) -> list[int]:
        if len(candidates) > cls.max_candidates:
            raise ValueError(f"at most {cls.max_candidates} candidates per request, got {len(candidates)}")
        if len(set(candidates)) != len(candidates):
            seen, duplicates = set(), []
            for item in candidates:
                if item in seen and item not in duplicates:
                    duplicates.append(item)
                seen.add(item)
            raise ValueError(f"duplicate candidate ids {duplicates[:10]}")
        return candidates


def rank_request_model(max_candidates: int) -> type[RankRequest]:
    """RankRequest with the configured bound on the candidate list."""
    return type("RankRequest", (RankRequest,), {"max_candidates": max_candidates, "__module__": __name__})


class RankedItem(BaseModel):
    item_id: int
    score: float = Field(description="Calibrated probability of an apply (ranker, then random effects in logit space).")
    rank: int


class RankResponse(BaseModel):
    """Top-k items, what was used to score them, and how the request was served."""

    member_id: int
    items: list[RankedItem]
    cold_start: bool = Field(description="The member has no features online: population prior and meta-initialisation.")
    degraded: bool = Field(description="The feature store failed or missed its deadline: default features were used.")
    degraded_reasons: list[str] = Field(default_factory=list)
    unknown_candidates: list[int] = Field(default_factory=list, description="Candidates with no features online.")
    explored: bool = Field(False, description=(
        "Scored with Thompson draws of the random effects (`explore`; false when no GLMix state is served)."))
    versions: dict[str, Any] = Field(description="Model tags and feature-view versions used for this response.")
