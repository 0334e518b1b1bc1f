"""Policy: how much to prune each coupled group, as plain JSON-serialisable data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Policy", "PolicyError"]


class PolicyError(ValueError):
    """A policy does not fit its search space (unknown group, ratio out of bounds, not a number)."""


class Policy(Mapping[str, float]):
    """An immutable mapping ``group name -> prune ratio`` (the fraction of units removed).

    Policies are plain data: they compare by value, hash (so a ledger can cache evaluations by
    policy) and round-trip through JSON. Validation against a search space happens in
    :meth:`autoprune.search_spaces.SearchSpace.validate`, because only the space knows the groups.
    """

    __slots__ = ("_ratios",)

    def __init__(self, ratios: Mapping[str, float] | None = None) -> None:
        clean: dict[str, float] = {}
        for name, value in (ratios or {}).items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise PolicyError(f"ratio of group {name!r} must be a number, got {value!r}") from None
            if not math.isfinite(v):
                raise PolicyError(f"ratio of group {name!r} must be finite, got {value!r}")
            clean[str(name)] = v
        self._ratios = clean

    def __getitem__(self, name: str) -> float:
        return self._ratios[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ratios)

    def __len__(self) -> int:
        return len(self._ratios)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._ratios.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._ratios) == dict(other)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v:.3f}" for k, v in self._ratios.items())
        return f"Policy({{{inner}}})"

    def to_dict(self) -> dict[str, float]:
        return dict(self._ratios)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self._ratios, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"policy is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise PolicyError(f"policy JSON must be an object of group -> ratio, got {type(data).__name__}")
        return cls(data)
