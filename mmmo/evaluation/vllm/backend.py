"""The ``vllm`` evaluation backend: one engine per slot, each recipe's weights reloaded in place.

:class:`VLLMBackend` implements :class:`~mmmo.evaluation.backend.EvalBackend` over a
model-less :class:`~mmmo.merging.Materializer` (``skeleton=False``) and one engine
(:mod:`.engine`). Serving a recipe: mark nothing served, stream the merged tensors into a
:class:`~.weights.ShmCheckpoint`, reload the engine from it, reset its prefix cache, remove the
shared-memory copy, and only then mark the recipe served. Whatever fails on the way leaves
``serving`` None, so a previous trial's weights are never scored under a new recipe's id.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from mmmo.evaluation.vllm.client import EngineHTTPError
from mmmo.evaluation.vllm.engine import AttachedEngine, Engine, EngineError
from mmmo.evaluation.vllm.weights import ShmCheckpoint, load_into_engine, sweep_stale

__all__ = ["VLLMBackend"]

LOG = logging.getLogger(__name__)


class VLLMBackend:
    """Serves one model at a time through a vLLM engine, for lm-eval.

    Args:
        materializer: A :class:`~mmmo.merging.Materializer` over the family (``skeleton=False``
            recommended: no transformers model is needed here).
        engine: A started or not yet started :class:`Engine` / :class:`AttachedEngine`
            (started here if it does not answer).
        num_concurrent: Requests each benchmark keeps in flight.
        request_timeout: Seconds one request may take.
        shm_dir: Where the per-trial checkpoints are written (tmpfs).
        max_batch: Upper bound of prompts per request (``lm(batch_size=...)`` is capped).
    """

    name = "vllm"
    concurrent = True

    def __init__(self, materializer: Any, engine: Engine | AttachedEngine, *,
                 num_concurrent: int = 8, request_timeout: float = 600.0,
                 shm_dir: str = "/dev/shm", max_batch: int = 16) -> None:
        self.materializer = materializer
        self.engine = engine
        self.num_concurrent = num_concurrent
        self.request_timeout = request_timeout
        self.shm_dir = shm_dir
        self.max_batch = max_batch
        self._serving: str | None = None
        self.closed = False
        """Whether :meth:`close` stopped the engine (a cached backend is then built again)."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._max_len: int | None = None
        self._served_name: str | None = None
        for folder in sweep_stale(shm_dir):
            LOG.warning("removed %s, left on shared memory by a process that died", folder)
        if not engine.healthy():
            engine.start()
        self._describe()

    def _describe(self) -> None:
        """Read the served name and context length from the engine."""
        models = self.engine.models()
        if not models:
            raise EngineError(f"{self.engine.name} serves no model")
        self._served_name = str(models[0]["id"])
        self._max_len = int(models[0].get("max_model_len") or 2048)

    # ------------------------------------------------------------------ EvalBackend

    @property
    def serving(self) -> str | None:
        """The recipe (or ``model-<fingerprint>``) the engine's weights are; None while a
        reload runs, after a failed one, and after a restart."""
        return self._serving

    def serve_recipe(self, recipe: Any) -> dict[str, Any]:
        """Merge ``recipe`` into shared memory and reload the engine from it."""
        return self._serve(lambda sink: self.materializer.stream(recipe, sink))

    def serve_model(self, label: str) -> dict[str, Any]:
        """Reload the engine with the base's or a source's own weights."""
        return self._serve(lambda sink: self.materializer.stream_model(label, sink))

    def _serve(self, produce: Any) -> dict[str, Any]:
        with self._lock:
            self._serving = None
            started = time.perf_counter()
            checkpoint = ShmCheckpoint(self.shm_dir, self.materializer.tensor_layout())
            try:
                result = produce(checkpoint.put)  # its "merge" time includes these copies
                checkpoint.close()
                try:
                    timings = load_into_engine(self.engine.url, checkpoint.folder,
                                               timeout=self.request_timeout)
                except EngineHTTPError as exc:
                    raise EngineError(f"{self.engine.name} could not reload the weights of "
                                      f"{result.recipe_id}: {exc}") from exc
            finally:
                checkpoint.remove()
            info = result.info()
            info["timings"].update(timings)
            info["seconds"] = time.perf_counter() - started
            info["backend"] = self.name
            self._serving = result.recipe_id
            return info

    def lm(self, *, batch_size: int | str) -> Any:
        """The calling thread's lm-eval ``LM`` over the engine (re-used; one per thread, as
        HF tokenizers are not thread-safe)."""
        from mmmo.evaluation.vllm.lm import completions_lm

        size = self.max_batch if batch_size == "auto" else max(1, min(int(batch_size),
                                                                      self.max_batch))
        key = (self.engine.url, size)
        cache = getattr(self._local, "lms", None)
        if cache is None:
            cache = self._local.lms = {}
        lm = cache.get(key)
        if lm is None:
            mat = self.materializer
            lm = cache[key] = completions_lm(
                url=self.engine.url, model=self._served_name or "", tokenizer=str(mat.base_dir),
                batch_size=size, num_concurrent=self.num_concurrent,
                max_length=self._max_len or 2048, timeout=self.request_timeout,
                trust_remote_code=mat.trust_remote_code)
        return lm

    def healthy(self) -> bool:
        """Whether the engine process runs and answers ``/health`` in time."""
        return self.engine.healthy()

    def restart(self) -> None:
        """Replace a dead or hung engine with a fresh one; nothing is served afterwards."""
        with self._lock:
            self._serving = None
            LOG.warning("restarting %s", self.engine.name)
            self.engine.restart()
            self._describe()

    def close(self) -> None:
        """Stop a started engine; give an attached one its base weights back."""
        with self._lock:
            self._serving = None
            if isinstance(self.engine, AttachedEngine):
                try:
                    load_into_engine(self.engine.url, self.materializer.base_dir,
                                     timeout=self.request_timeout)
                except (EngineHTTPError, OSError) as exc:
                    LOG.warning("%s keeps the last trial's weights: %s", self.engine.name, exc)
            self.engine.stop()
            self.materializer.close()
            self.closed = True
