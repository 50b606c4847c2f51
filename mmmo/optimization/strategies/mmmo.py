r"""``mmmo``: the paper's proposal engine (Li et al., arXiv 2407.00487).

One ask, after the initial design:

1. fit one GP per objective to the successful trials (outcomes standardised inside the model);
2. choose ``q = 2 n`` candidates (``n_candidates``; the paper's 10 for batches of 5) by
   sequential greedy q(Log)EHVI over the observed Pareto front, aware of the pending points
   (Kriging believer by default, see ``acquisition.ehvi_candidates``); the reference point is
   BoTorch's ``infer_reference_point`` on the observed front, on the model's (raw) scale;
3. weak-to-strong: move each candidate by one DE/rand/1/bin step whose donors are the top-k
   evaluated recipes by the sum of task scores (``weak_to_strong.py``);
4. Fisher filter: rank the candidates by increasing ``sum_k 1/var_k`` (most uncertain first,
   ``fisher.py``); without the filter they keep the acquisition's order;
5. the base class keeps the first ``n`` that are new after rounding.

Differences from the authors' code, on purpose:

- reference point: the paper takes ``0.9 x`` (``1.1 x`` when negative) the raw minima of the
  initial design, while its GPs and qEHVI work on standardised outcomes, so the point is on the
  wrong scale (and is never updated). Here it is inferred from the current front on the same
  (raw) scale as the acquisition, ``nadir - 0.1 * range`` (``ref_point="initial"`` fixes it
  from the initial design instead, like the paper; a tuple sets it explicitly).
- qLogEHVI by default (``acquisition="qehvi"`` restores the paper's qEHVI).
- the batch is built with a Kriging believer (``batch_selection="believer"``): the paper's exact
  sequential greedy q-EHVI (``"joint"``) costs ``2 ** (q + pending)`` per evaluation, which
  for its q = 10 takes minutes per ask on 2 CPU cores (it was run on a GPU).
- failed trials (NaN) are excluded from the GPs but remembered, and no proposal repeats a told,
  pending or batch recipe after rounding (duplicates are replaced by the next-ranked candidate);
- the Fisher information uses the model conditioned on pending points (asynchronous batches);
- optional fixed observation noise from the evaluation's standard errors (``use_noise``);
- the strong recipes are ranked by the sum of min-max scaled task scores (``rank_scale``): a raw
  sum lets the objective on the largest scale decide alone (on BraninCurrin it drove the DE
  donors to Branin's optimum, where Currin is worse than the reference point).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from mmmo.optimization.acquisition import ehvi_candidates
from mmmo.optimization.bo import as_tensor
from mmmo.optimization.fisher import fisher_order
from mmmo.optimization.registry import register_strategy
from mmmo.optimization.strategies.qehvi import QEHVI, QEHVISettings
from mmmo.optimization.weak_to_strong import top_k_by_task_score, weak_to_strong


class MMMOSettings(QEHVISettings):
    r"""Settings of ``mmmo``; each part can be switched off for ablations."""

    weak_to_strong: bool = True
    """Apply the weak-to-strong DE step to the acquisition's candidates."""
    fisher_filter: bool = True
    """Keep the candidates with the lowest Fisher information; without it, the first ones."""
    n_candidates: int | None = Field(default=None, ge=1)
    """Candidates chosen by the acquisition before the filter; ``None``: twice the number
    asked (the paper's 10 for batches of 5, and 2 for the ``ask(1)`` of an asynchronous
    schedule). At least ``n`` are always chosen."""
    top_k: int = Field(default=5, ge=3)
    """Strong recipes (by the sum of task scores) the DE donors come from."""
    de_f: float = Field(default=0.5, ge=0.0, le=2.0)
    """DE differential weight ``F``."""
    de_cr: float = Field(default=0.5, ge=0.0, le=1.0)
    """DE crossover rate ``CR`` (at least one coordinate always comes from the mutant)."""
    rank_scale: Literal["minmax", "raw"] = "minmax"
    """How task scores are summed to rank the strong recipes: each min-max scaled over the
    successful trials (default), or raw (the paper's code; fine when all are accuracies)."""


@register_strategy
class MMMO(QEHVI):
    r"""q(Log)EHVI candidates, moved by weak-to-strong DE, filtered by Fisher information."""

    name = "mmmo"
    Settings = MMMOSettings

    def _propose(self, n: int, *, pending: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        settings: MMMOSettings = self.settings  # type: ignore[assignment]
        surrogate = self._surrogate()
        candidates = ehvi_candidates(
            surrogate.model,
            Y=surrogate.data.Y,
            ref_point=surrogate.ref_point,
            q=max(settings.n_candidates or 2 * n, n),
            pending=as_tensor(pending),
            kind=settings.acquisition,
            batch=settings.batch_selection,
            opt=settings.acqf_optimization(),
        ).numpy()
        if settings.weak_to_strong:
            parents = top_k_by_task_score(
                self._X,
                self._Y,
                k=settings.top_k,
                task_objectives=self.task_objectives,
                scale=settings.rank_scale,
            )
            if len(parents) >= 3:
                candidates = weak_to_strong(
                    candidates, parents, f=settings.de_f, cr=settings.de_cr, rng=rng
                )
        if settings.fisher_filter:
            candidates = candidates[fisher_order(surrogate.model, candidates, pending=pending)]
        return candidates
