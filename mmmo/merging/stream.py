"""Streaming a recipe's merged tensors without a transformers model (the vLLM backend's mode).

:meth:`Streaming.stream` runs the Materializer's plan, order, seed and sums and hands each merged
tensor (HF name, the Materializer's dtype, on the math device) to a sink instead of copying it
into a parameter: the merged model is never whole in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from mmmo.errors import MergeError
from mmmo.hooks import crash_point
from mmmo.merging.recipe import Recipe
from mmmo.merging.result import MergeResult, add_sum, injected_merge_fault, l1, sparsity_group

__all__ = ["Streaming"]


class Streaming:
    """The streaming half of :class:`~mmmo.merging.materialize.Materializer` (a mixin)."""

    dtype: torch.dtype
    tokenizer: Any
    base: Any
    _lock: Any
    _layout: dict[str, tuple[int, ...]]
    _resident: dict[str, dict[str, torch.Tensor]]
    _paths: dict[str, Any]


    def tensor_layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """``{name: (shape, dtype)}`` of every tensor :meth:`stream` hands out (HF names)."""
        return {name: (shape, self.dtype) for name, shape in self._layout.items()}

    def stream(self, recipe: Recipe, sink: Callable[[str, torch.Tensor], None]) -> MergeResult:
        """Merge ``recipe`` tensor by tensor into ``sink``; no resident model is touched.

        Same plan, order, seed and sparsity sums as :meth:`materialize` (the tensors are
        bit-identical to the parameters it would write): ``sink(name, tensor)`` receives every
        name of :meth:`tensor_layout` once, each tensor in the Materializer's dtype on the math
        device, valid only during the call (copy it out). The result's ``model`` is None.

        Raises:
            ValueError: the recipe's models or dtype are not this Materializer's.
            MergeError: mergekit failed, or the merged weights are not finite.
            Exception: whatever ``sink`` raises (the merge stops there).
        """
        started = time.perf_counter()
        self._check_recipe(recipe)
        with self._lock:
            injected_merge_fault(recipe.recipe_id)
            sums: dict[str, torch.Tensor] = {}
            covered: set[str] = set()
            base = self._resident[str(self._paths[self.base.ref])]
            tasks = self._plan(recipe)
            plan_done = time.perf_counter()
            with torch.no_grad():
                for i, (name, merged) in enumerate(self._run(recipe, tasks)):
                    if i == len(tasks) // 2:
                        crash_point("merge:halfway")
                    if name not in self._layout:
                        continue  # e.g. lm_head of a tied model: not a separate parameter
                    tensor = merged.to(self.dtype)
                    covered.add(name)
                    ref = base[name].to(tensor.device, non_blocking=True)
                    add_sum(sums, sparsity_group(name), l1(tensor, ref))
                    sink(name, tensor)
                    del merged, tensor
                for name in self._uncovered_params(covered):
                    tensor = base[name].to(self._device_of(name), non_blocking=True)
                    sums.setdefault(sparsity_group(name),
                                    torch.zeros((), dtype=torch.float64, device=tensor.device))
                    sink(name, tensor)
            by_group = {g: float(v) for g, v in sums.items()}
            total = float(sum(by_group.values()))
            if not torch.isfinite(torch.tensor(total)):
                bad = [g for g, v in by_group.items() if not torch.isfinite(torch.tensor(v))]
                raise MergeError(f"recipe {recipe.recipe_id}: merged weights are not finite "
                                 f"(groups {bad[:5]}); e.g. linear with all weights 0 and "
                                 "normalize, or an overflow in float16")
            done = time.perf_counter()
            return MergeResult(model=None, tokenizer=self.tokenizer, sparsity=total,
                               sparsity_by_group=by_group, seconds=done - started,
                               recipe_id=recipe.recipe_id,
                               timings={"plan": plan_done - started, "merge": done - plan_done})

    def stream_model(self, model: str, sink: Callable[[str, torch.Tensor], None]) -> MergeResult:
        """Hand the base's or a source's own resident tensors to ``sink`` (as :meth:`stream`).

        ``model`` is a label, ref or fingerprint; the result is :meth:`load_model`'s (its
        ``recipe_id`` is ``model-<fingerprint>``, ``sparsity`` the distance to the base).
        """
        started = time.perf_counter()
        entry = self._model_entry(model)
        with self._lock, torch.no_grad():
            tensors = self._resident[str(self._paths[entry.ref])]
            base = self._resident[str(self._paths[self.base.ref])]
            sums: dict[str, torch.Tensor] = {}
            for name in self._layout:
                tensor = tensors[name].to(self._device_of(name), non_blocking=True)
                add_sum(sums, sparsity_group(name),
                     l1(tensor, base[name].to(tensor.device, non_blocking=True)))
                sink(name, tensor)
            by_group = {g: float(v) for g, v in sums.items()}
            seconds = time.perf_counter() - started
            return MergeResult(model=None, tokenizer=self.tokenizer,
                               sparsity=float(sum(by_group.values())),
                               sparsity_by_group=by_group, seconds=seconds,
                               recipe_id=f"model-{entry.fingerprint}",
                               timings={"plan": 0.0, "merge": seconds})
