"""A small mergeable quantile sketch for duration percentiles.

Written by hand rather than taken from a library because it must be deterministic and JSON-checkpointable
(so stats folded from zero equal stats restored from a checkpoint and folded on) and tiny; values are
bucketed on a log scale with 1% relative accuracy, the approach of DDSketch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["QuantileSketch", "SketchState"]

_GAMMA = 1.02
_LOG_GAMMA = math.log(_GAMMA)
_MIN_VALUE = 1e-3  # durations are in ms; anything under a microsecond counts as zero


# A stored bucket index beyond this is not one a recorded duration gave: durations in ms sit between
# about -350 (a microsecond) and 920 (a day), and near 35,800 a bucket's value (gamma ** index)
# overflows a float, which ``quantile`` could not answer.
_MAX_INDEX = 30_000


def _bucket_index(text: str) -> str:
    if abs(int(text)) > _MAX_INDEX:
        raise ValueError(f"bucket index beyond {_MAX_INDEX}")
    return text


class SketchState(BaseModel):
    """The shape of ``to_state``'s value, for checking a stored one before ``from_state`` reads it."""

    model_config = ConfigDict(strict=True, frozen=True)

    buckets: dict[Annotated[str, AfterValidator(_bucket_index)], int]
    zero: int
    count: int
    total: float
    max: float


class QuantileSketch:
    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.zero = 0
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.max:  # what max() keeps, without the call
            self.max = value
        if value < _MIN_VALUE:
            self.zero += 1
            return
        index = math.ceil(math.log(value) / _LOG_GAMMA)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def quantile(self, q: float) -> float:
        if self.count == 0:
            return 0.0
        rank = q * (self.count - 1)
        seen = self.zero
        if rank < seen:
            return 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if rank < seen:
                # The bucket's midpoint in log space keeps the relative error under (gamma - 1) / 2.
                return min(2 * _GAMMA**index / (_GAMMA + 1), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def to_state(self) -> dict[str, Any]:
        return {
            "buckets": {str(k): v for k, v in sorted(self.buckets.items())},
            "zero": self.zero,
            "count": self.count,
            "total": self.total,
            "max": self.max,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QuantileSketch:
        sketch = cls()
        sketch.buckets = {int(k): int(v) for k, v in state.get("buckets", {}).items()}
        sketch.zero = int(state.get("zero", 0))
        sketch.count = int(state.get("count", 0))
        sketch.total = float(state.get("total", 0.0))
        sketch.max = float(state.get("max", 0.0))
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]
