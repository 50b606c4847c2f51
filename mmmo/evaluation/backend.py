"""Evaluation backends: what serves one slot's current model to lm-eval.

A slot (one device) holds one backend. The backend serves one model at a time: a recipe's
merged weights or one of the family's models itself, and hands lm-eval an ``LM`` over it.
Two backends sit behind this interface:

- ``hf`` (:class:`HFBackend`): the merge is materialised in place into a resident
  transformers model (:class:`~mmmo.merging.Materializer`), evaluated by lm-eval's HFLM in
  this process. Benchmarks of one model run one at a time (HF tokenizers are not
  thread-safe).
- ``vllm`` (:mod:`mmmo.evaluation.vllm`): an engine process per slot, started once from the
  base; each recipe's merged tensors are reloaded into it in place; lm-eval talks to it through
  its completions API, and benchmarks of one model run concurrently (the engine batches them).

The search's evaluation step only uses this interface: serve the recipe unless it is already
served, build the ``LM``, evaluate; after a failure, ask :meth:`EvalBackend.healthy` and
:meth:`EvalBackend.restart` a dead engine before retrying.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["EvalBackend", "HFBackend", "backend_for"]


@runtime_checkable
class EvalBackend(Protocol):
    """Serves one model at a time on one slot, for lm-eval."""

    name: str
    """``hf`` or ``vllm``: part of every benchmark's cache key."""
    concurrent: bool
    """Whether several benchmarks of the served model may run at the same time."""

    @property
    def serving(self) -> str | None:
        """Id of what is served now (a recipe id, or ``model-<fingerprint>``); None when
        nothing known is (before the first load, after a failed load or a restart)."""
        ...

    def serve_recipe(self, recipe: Any) -> dict[str, Any]:
        """Serve ``recipe``'s merged weights; return its merge info (``recipe_id``,
        ``sparsity``, ``sparsity_by_group``, ``seconds``, ``timings``)."""
        ...

    def serve_model(self, label: str) -> dict[str, Any]:
        """Serve the base or a source model itself (by label); return its merge info."""
        ...

    def lm(self, *, batch_size: int | str) -> Any:
        """An lm-eval ``LM`` over what is served now."""
        ...

    def healthy(self) -> bool:
        """Whether the backend can still evaluate (an engine process is alive and answers)."""
        ...

    def restart(self) -> None:
        """Bring a dead or hung backend back up; nothing is served afterwards."""
        ...

    def close(self) -> None:
        """Free what the backend holds (models, engine processes)."""
        ...


class HFBackend:
    """The in-process backend: a resident transformers model, merged into in place."""

    name = "hf"
    concurrent = False

    def __init__(self, materializer: Any) -> None:
        self.materializer = materializer
        self._closed = False

    @property
    def serving(self) -> str | None:
        """The recipe (or model) the resident weights hold."""
        mat = self.materializer
        return mat.current_recipe_id if mat.last_result is not None else None

    def serve_recipe(self, recipe: Any) -> dict[str, Any]:
        """Materialise ``recipe`` into the resident model."""
        return self.materializer.materialize(recipe).info()

    def serve_model(self, label: str) -> dict[str, Any]:
        """Copy the base or a source into the resident model."""
        return self.materializer.load_model(label).info()

    def target(self) -> tuple[Any, Any]:
        """``(model, tokenizer)`` for :func:`~mmmo.evaluation.evaluate_benchmark` (which then
        retries an out-of-memory batch at half its size)."""
        return self.materializer.model, self.materializer.tokenizer

    def lm(self, *, batch_size: int | str) -> Any:
        """lm-eval's HFLM over the resident model (built once per batch size, re-used)."""
        from mmmo.evaluation.lm import get_lm

        mat = self.materializer
        return get_lm(mat.model, mat.tokenizer, batch_size=batch_size)

    def healthy(self) -> bool:
        """Always: the model lives in this process."""
        return True

    def restart(self) -> None:
        """Nothing to restart in process."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` freed the models (a cached backend is then built again)."""
        return self._closed

    def close(self) -> None:
        """Drop the resident model and tensors."""
        from mmmo.evaluation.lm import release_lm

        if self.materializer.model is not None:
            release_lm(self.materializer.model)
        self.materializer.close()
        self._closed = True


def backend_for(spec: Any, slot_index: int, device: str, log_dir: Any) -> EvalBackend:
    """The evaluation backend of one device slot, as ``spec.compute.backend`` says.

    ``hf``: an :class:`HFBackend` over a resident Materializer on ``device``. ``vllm``: a
    :class:`~mmmo.evaluation.vllm.VLLMBackend` (its engine started, or attached by URL, and
    answering; its log ``vllm-slot<slot_index>.log`` in ``log_dir``). Call
    :func:`mmmo.evaluation.vllm.preflight` before the first slot is built.

    Args:
        spec: The search spec.
        slot_index: The slot's index (0-based).
        device: The slot's device (``cpu``, ``cuda:<k>``, ``auto``...).
        log_dir: The run's log folder.
    """
    from pathlib import Path

    if spec.compute.backend == "vllm":
        from mmmo.evaluation.vllm import vllm_backend

        return vllm_backend(spec, slot_index=slot_index, device=device, log_dir=Path(log_dir))
    from mmmo.merging.materialize import Materializer

    return HFBackend(Materializer.from_spec(spec, device=device))
