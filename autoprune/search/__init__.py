"""Search backends behind one contract (:class:`Searcher`) and one ledger.

``create_searcher(name, evaluator=..., seed=..., **options)`` builds a backend by name; backends
are imported only when asked for, so ``import autoprune.search`` does not load SB3 or Optuna's
samplers.
"""

from __future__ import annotations

import importlib
from typing import Any

from autoprune.search.base import Searcher
from autoprune.search.ledger import Ledger, LedgerSpec, count_recorded, read_ledger

__all__ = ["SEARCHERS", "Ledger", "LedgerSpec", "Searcher", "count_recorded", "create_searcher", "read_ledger"]

# name -> (module, class, fixed options)
SEARCHERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ddpg": ("autoprune.search.ddpg", "DDPGSearcher", {}),
    "optuna": ("autoprune.search.optuna_search", "OptunaSearcher", {}),
    "tpe": ("autoprune.search.optuna_search", "OptunaSearcher", {"sampler": "tpe"}),
    "gp": ("autoprune.search.optuna_search", "OptunaSearcher", {"sampler": "gp"}),
    "cmaes": ("autoprune.search.optuna_search", "OptunaSearcher", {"sampler": "cmaes"}),
    "qmc": ("autoprune.search.optuna_search", "OptunaSearcher", {"sampler": "qmc"}),
    "nsga2": ("autoprune.search.optuna_search", "OptunaSearcher", {"sampler": "nsga2"}),
    "evolution": ("autoprune.search.evolution", "EvolutionSearcher", {}),
    "random": ("autoprune.search.baselines", "RandomSearcher", {}),
    "uniform": ("autoprune.search.baselines", "UniformSearcher", {}),
}


def create_searcher(name: str, **options: Any) -> Searcher:
    """Build a search backend, e.g. ``create_searcher("ddpg", evaluator=ev, seed=0, warmup=20)``."""
    if name not in SEARCHERS:
        raise ValueError(f"unknown search backend {name!r}; choose one of: {', '.join(SEARCHERS)}")
    module, cls, fixed = SEARCHERS[name]
    searcher_cls = getattr(importlib.import_module(module), cls)
    try:
        return searcher_cls(**{**fixed, **options})  # type: ignore[no-any-return]
    except TypeError as e:
        raise ValueError(f"bad options for backend {name!r}: {e}") from None
