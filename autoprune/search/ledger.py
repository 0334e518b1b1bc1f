"""The ledger: every evaluation of every backend, recorded exactly once, in an Optuna study.

An Optuna study in RDB storage (a SQLite file in the run directory by default; any SQLAlchemy URL,
e.g. PostgreSQL, for clusters) holds one trial per evaluation: the policy as the trial's
parameters, the reward (or the search's objectives) as its value(s), and the full
:class:`~autoprune.evaluation.Result` in its user attributes. DDPG episodes and evolution
individuals become trials like Optuna's own, so resuming, reporting and ``optuna-dashboard``
work the same for every backend.

Evaluations are cached by the *kept channel counts* of a policy: two policies that round to the
same pruned network are the same evaluation, and one already in the ledger is never run again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from autoprune.result import Result
from autoprune.search_spaces import Policy, SearchSpace

__all__ = ["Ledger", "LedgerSpec", "count_recorded", "locate", "read_ledger"]


@dataclass(frozen=True)
class LedgerSpec:
    """Where a searcher should open its ledger: a shared storage URL and this run's study in it."""

    storage: str
    study_name: str = "autoprune"

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Ledger:
    """Record and look up evaluations.

    Args:
        space: the search space (its groups are the trials' parameters).
        storage: an SQLAlchemy URL (``"sqlite:////abs/path/ledger.db"``, ``"postgresql://..."``) or
            ``None`` for an in-memory study.
        study_name: one ledger per study name in the storage.
        directions: the study's objective directions (one ``"maximize"`` for a reward; a
            multi-objective search passes its own, e.g. ``("maximize", "minimize")``).
    """

    def __init__(self, space: SearchSpace, *, storage: str | None = None, study_name: str = "autoprune",
                 directions: Sequence[str] = ("maximize",)) -> None:
        self.space = space
        self.storage = storage
        self.study = optuna.create_study(storage=_open_storage(storage), study_name=study_name, load_if_exists=True,
                                         directions=[StudyDirection[d.upper()] for d in directions])
        self.distributions: dict[str, BaseDistribution] = {g.name: FloatDistribution(g.low, g.high)
                                                            for g in space.groups}
        self._cache: dict[tuple[int, ...], Result] = {}
        self._order: list[Result] = []
        # called before every write; raises to stop one (a run's lease on a shared ledger, lost to another process)
        self.guard: Callable[[], None] | None = None
        for result in _recorded(self.study):
            self._remember(result)

    @classmethod
    def open(cls, where: str | os.PathLike[str] | LedgerSpec, space: SearchSpace, **kwargs: Any) -> Ledger:
        """The ledger at ``where`` (see :func:`locate`), created if it does not exist yet."""
        spec = locate(where, create=True)
        return cls(space, storage=spec.storage, study_name=spec.study_name, **kwargs)

    # ----------------------------------------------------------------------------------------
    def key(self, policy: Policy) -> tuple[int, ...]:
        return tuple(int(k) for k in self.space.keep_units(policy))

    def get(self, policy: Policy) -> Result | None:
        """The recorded result of an equivalent policy, if any."""
        return self._cache.get(self.key(policy))

    def _remember(self, result: Result) -> None:
        key = self.key(result.policy)
        if key not in self._cache:
            self._cache[key] = result
            self._order.append(result)

    def record(self, result: Result, *, backend: str, seed: int, values: Sequence[float] | None = None,
               trial: optuna.trial.Trial | None = None, cached: bool = False) -> None:
        """Store one evaluation as a trial.

        Args:
            values: the trial's objective values (default: the reward); ignored for failures.
            trial: an asked Optuna trial to tell (ask/tell backends); otherwise a trial is added.
            cached: the result came from the cache; recorded for the asking sampler's sake but not
                counted as a new evaluation.
        """
        if self.guard is not None:
            self.guard()
        # Few attributes: on an asked trial each one is a separate storage commit.
        attrs = {"result": json.dumps(result.to_dict()), "backend": backend, "seed": seed, "cached": cached}
        failed = result.failed is not None or result.reward is None
        if values is None and not failed:
            values = [float(result.reward)]  # type: ignore[arg-type]
        if trial is not None:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            if failed:
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                self.study.tell(trial, list(values))  # type: ignore[arg-type]
        else:
            params = {k: min(max(v, self.space.group(k).low), self.space.group(k).high)
                      for k, v in result.policy.items()}
            frozen = optuna.trial.create_trial(
                state=TrialState.FAIL if failed else TrialState.COMPLETE,
                values=None if failed else list(values),  # type: ignore[arg-type]
                params=params, distributions=self.distributions, user_attrs=attrs)
            self.study.add_trial(frozen)
        if not cached:
            self._remember(result)

    def fail_running(self) -> list[Policy]:
        """Mark failed the trials left RUNNING (asked, never told) and return their policies, to be run again.

        Call only while no other process writes this study (a held run), when such a trial can only be
        one a killed process left behind.
        """
        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for trial in stale:
            self.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return [Policy(t.params) for t in stale if set(t.params) == set(self.distributions)]

    # ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Distinct evaluations recorded (cache hits not counted)."""
        return len(self._order)

    @property
    def results(self) -> list[Result]:
        """Distinct evaluations in the order they were recorded."""
        return list(self._order)

    def best(self) -> Result | None:
        """The highest-reward evaluation that completed within budget."""
        ok = [r for r in self._order if r.ok and r.reward is not None]
        return max(ok, key=lambda r: r.reward) if ok else None  # type: ignore[arg-type, return-value]


def _recorded(study: optuna.Study) -> list[Result]:
    return [Result.from_dict(json.loads(t.user_attrs["result"])) for t in study.get_trials(deepcopy=False)
            if "result" in t.user_attrs and not t.user_attrs.get("cached")]


def locate(where: str | os.PathLike[str] | LedgerSpec, *, create: bool = False) -> LedgerSpec:
    """Where a ledger is, as a storage URL and a study: a :class:`LedgerSpec` as it is, a storage URL
    (``"postgresql://..."``, ``"sqlite:///..."``) with the default study, or a run directory's ``ledger.db``
    (an absolute path, so workers anywhere find it). The one place that turns "where" into storage.

    Raises:
        FileNotFoundError: ``where`` is a directory without a ledger and ``create`` is False.
    """
    if isinstance(where, LedgerSpec):
        return where
    if "://" in str(where):
        return LedgerSpec(str(where))
    path = Path(where).resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not (path / "ledger.db").exists():
        raise FileNotFoundError(f"{path / 'ledger.db'} does not exist: {where} is not a run directory")
    return LedgerSpec(f"sqlite:///{path / 'ledger.db'}")


def read_ledger(where: str | os.PathLike[str] | LedgerSpec) -> list[Result]:
    """Every distinct evaluation recorded at ``where`` (a run directory, a storage URL or a :class:`LedgerSpec`)."""
    spec = locate(where)
    return _recorded(optuna.load_study(study_name=spec.study_name, storage=spec.storage))


def count_recorded(run_dir: str | os.PathLike[str]) -> int:
    """Distinct evaluations in ``run_dir/ledger.db`` so far, safe to poll while a search writes it.

    Read-only SQLite, no Optuna: opening the study through Optuna would create the schema and race
    a search that is creating it. 0 while the file or its tables do not exist yet.
    """
    path = Path(run_dir).resolve() / "ledger.db"
    if not path.exists():
        return 0
    import sqlite3

    query = ("select count(*) from trials t where t.state = 'COMPLETE' and exists (select 1 from "
             "trial_user_attributes a where a.trial_id = t.trial_id and a.key = 'result') and not exists "
             "(select 1 from trial_user_attributes a where a.trial_id = t.trial_id and a.key = 'cached' "
             "and a.value_json = 'true')")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute(query).fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return 0


def _open_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """Optuna storage for ``url``; SQLite files run in WAL mode with ``synchronous=NORMAL``.

    Optuna commits every parameter and attribute of an asked trial separately; with SQLite's
    default full sync each commit waits for the disk (~10 ms), which cost ~0.4 s per trial. WAL
    with NORMAL sync survives a killed process (what resume needs); only an OS crash could lose the
    last commits. WAL also lets several worker processes read while one writes.
    """
    if url is None:
        return None
    if not url.startswith("sqlite"):  # a server: a connection it dropped (restart, failover) is replaced, not used
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    @event.listens_for(storage.engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # connections opened before the listener must not be reused
    return storage
