"""Scoring policies on the refitted model: rank candidates by (close to) what a run ships.

A run ships the trained model pruned by the policy *and refitted by least squares*
(:mod:`autoprune.reconstruction`), which recovers most of what pruning loses. The adaptive-BN evaluator
ranks candidates on the plainly pruned model instead, a proxy that can disagree with the shipped model's
accuracy (most at tight budgets). This evaluator refits every candidate before scoring it, as AMC's
environment did: the layers that lost inputs are refitted in one pass over :data:`REFIT_IMAGES` TRAIN
images (:func:`~autoprune.reconstruction.reconstruct_in_one_pass`), then BatchNorm is re-estimated and
validation accuracy measured like the adaptive-BN evaluator, which this one extends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from autoprune.evaluation import Evaluator
from autoprune.reconstruction import reconstruct_in_one_pass
from autoprune.search_spaces import Policy

__all__ = ["REFIT_IMAGES", "RefitEvaluator"]

# Images of each candidate's refit: half of what the shipped model's refit uses, about 2x the time of an
# adaptive-BN evaluation of ResNet-20 on one core (benchmarks/README.md).
REFIT_IMAGES = 256


class RefitEvaluator(Evaluator):
    """An :class:`~autoprune.evaluation.Evaluator` that refits each candidate before scoring it.

    Args:
        model, space, **kwargs: as for :class:`~autoprune.evaluation.Evaluator` (``path`` is always exact:
            the refit rewrites the pruned copy's weights).
        refit_images: TRAIN images of each candidate's refit (kept with the evaluator, so Ray workers have them).
    """

    def __init__(self, model: nn.Module, space: Any, *, refit_images: int = REFIT_IMAGES, **kwargs: Any) -> None:
        kwargs["path"] = "exact"
        super().__init__(model, space, **kwargs)
        self.refit_inputs = self.release_images(refit_images)

    @contextmanager
    def _pruned(self, policy: Policy) -> Iterator[nn.Module]:
        pruned = self.pruner.prune(policy)
        reconstruct_in_one_pass(self.model, pruned, self.pruner.plan(policy), self.refit_inputs, seed=self.seed)
        yield pruned
