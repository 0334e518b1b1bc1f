"""Result: one evaluated policy, as plain data (what the ledger stores and rewards read)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from autoprune.search_spaces import Policy

__all__ = ["Result"]


@dataclass(frozen=True)
class Result:
    """One evaluated policy. ``failed`` holds the error when the evaluation did not complete."""

    policy: Policy
    flops: int
    params: int
    flops_ratio: float
    params_ratio: float
    feasible: bool
    accuracy: float | None = None
    reward: float | None = None
    latency: float | None = None
    failed: str | None = None
    path: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Evaluated without error and within budget: a candidate for "best"."""
        return self.failed is None and self.feasible

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (what the ledger stores)."""
        d = asdict(self)
        d["policy"] = self.policy.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        return cls(**{**data, "policy": Policy(data["policy"]), "seconds": dict(data.get("seconds", {}))})
