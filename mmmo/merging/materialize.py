"""In-memory materialisation: a recipe's weights computed by mergekit into a resident model.

One :class:`Materializer` per worker/device. Created once, it

1. checks homology (configs + safetensors headers, before anything expensive);
2. builds the model skeleton with accelerate's ``init_empty_weights`` and places every
   parameter on its device (one device, or an accelerate device map across GPUs when the model
   does not fit one), filled from the base;
3. reads base and sources once and keeps their tensors resident: on the math device where
   memory allows (tensor by tensor, within a budget), the rest in pinned host memory.

Then :meth:`Materializer.materialize` turns a recipe into weights without touching disk:

* **mergekit plans it**: ``MergePlanner`` (mergekit's own) resolves the recipe, including
  per-layer gradients, into one ``ExecuteMergeMethodTask`` per output tensor;
* **in mergekit-yaml's order**: the tasks run in the order mergekit's ``Executor`` schedules
  them for ``mergekit-yaml`` (its lexicographic topological sort, cached per structure);
* **by mergekit's code**: each task's own ``execute`` (mergekit's graph adapter: parameter
  binding, dtype alignment, the merge method) runs on the resident tensors, on the device of
  the parameter it produces, instead of on tensors its loader re-reads from disk;
* **under the recipe's seed**: the math devices' default generators are seeded with
  ``random_seed`` for the merge and restored afterwards (:mod:`mmmo.merging.rng`).

So DARE/DELLA draw exactly the stream ``mergekit-yaml --random-seed`` draws on the same
device: the same masks, bit-identical weights (tested for every method on CPU). Two conditions
for bit-identity: the same math device (CPU and CUDA generators differ; on several GPUs each
device draws its own stream, reproducible but not mergekit-yaml's single stream), and on CPU
the same torch thread count (CPU reductions such as DARE's L1 rescale sum in a
thread-dependent order; mergekit-yaml's ``--num-threads``).

Each merged tensor is copied into its resident parameter and, while it is at hand, the
sparsity objective is accumulated: ``sum |merged - base|`` over every parameter, each tensor
summed in fp32 (in chunks of 64M elements) and the per-tensor sums added in fp64, grouped by
:func:`sparsity_group` (``embed_tokens``, ``layers.<i>``, ``norm``, ``lm_head``). No second
pass over the model, no second load.

Without a model (``skeleton=False``, the vLLM backend's mode) nothing of transformers is built:
:meth:`Materializer.stream` runs the same plan, order, seed and sums, and hands each merged
tensor (HF name, the Materializer's dtype, on the math device) to a sink instead of copying it
into a parameter; the tensors come out one at a time, so the merged model is never whole in
this process. Its parameters are the base checkpoint's tensors, less the output embedding of a
model with tied embeddings (what transformers' ``named_parameters`` lists).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from mmmo.errors import MergeError
from mmmo.merging.homology import check_homology
from mmmo.merging.models import resolve_local
from mmmo.merging.placement import Placement, resolve_device, with_architectures
from mmmo.merging.recipe import ModelEntry, Recipe, _entry
from mmmo.merging.result import MergeResult, sparsity_group
from mmmo.merging.rng import seeded
from mmmo.merging.stream import Streaming

__all__ = ["MergeError", "MergeResult", "Materializer", "sparsity_group"]

LOG = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHUNK = 1 << 26
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class Materializer(Placement, Streaming):
    """Resident base + sources + model skeleton; materialises recipes in memory.

    Args:
        base: The base model (ModelEntry, ModelSpec or ref string).
        sources: The source models (recipes may use any subset, in any order).
        device: ``auto`` (CUDA when present, several GPUs through an accelerate device map when
            the model does not fit the first), ``cpu``, ``cuda``, ``cuda:<i>`` or ``mps``.
        dtype: The dtype of the resident tensors and model (recipes must use the same).
        resident: Where the source/base tensors live: ``device`` (all on the math device),
            ``cpu`` (pinned host memory, copied per tensor), or ``auto`` (on the device as far
            as a memory budget allows, tensor by tensor; the rest on the host).
        max_memory: accelerate ``max_memory`` for the multi-GPU device map.
        check: Run :func:`check_homology` first (default True).
        trust_remote_code: Let transformers run Python code shipped with the base model (its
            config, tokenizer and model classes); off by default.
        skeleton: Build the resident transformers model (default). False: no model at all;
            recipes are merged only through :meth:`stream` / :meth:`stream_model` (the
            resident sources stay where ``resident`` puts them, on one math device).
    """

    def __init__(self, base: ModelEntry | Any | str, sources: Sequence[ModelEntry | Any | str],
                 *, device: str | torch.device = "auto", dtype: str = "float32",
                 resident: Literal["auto", "device", "cpu"] = "auto",
                 max_memory: dict[Any, Any] | None = None, check: bool = True,
                 trust_remote_code: bool = False, skeleton: bool = True) -> None:
        started = time.perf_counter()
        self.trust_remote_code = bool(trust_remote_code)
        self.base = _entry(base)
        self.sources = tuple(_entry(s) for s in sources)
        if check:
            check_homology(self.base, self.sources)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} (got {dtype!r})")
        self.dtype_name = dtype
        self.dtype = _DTYPES[dtype]
        self.device = resolve_device(device)
        self._lock = threading.Lock()
        self._current: str | None = None
        self._order_cache: dict[tuple[str, ...], list[int]] = {}
        self._uncovered: list[str] | None = None

        models = (self.base, *self.sources)
        self._paths = {m.ref: resolve_local(m.ref, m.revision) for m in models}
        self._by_fingerprint = {m.fingerprint: m for m in models}
        base_dir = self._paths[self.base.ref]
        self.base_dir = base_dir
        self._last: MergeResult | None = None

        from mergekit.architecture import arch_info_for_config
        from transformers import AutoConfig, AutoTokenizer

        trust = self.trust_remote_code
        self.config = with_architectures(AutoConfig.from_pretrained(
            str(base_dir), trust_remote_code=trust))
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=trust)
        self.arch_info = arch_info_for_config(self.config)
        if self.arch_info is None:
            raise MergeError(f"mergekit has no architecture definition for "
                             f"{self.config.architectures[0]} (model_type "
                             f"{self.config.model_type})")
        self.skeleton = bool(skeleton)
        if self.skeleton:
            self.model = self._skeleton(max_memory)
            self._params: dict[str, torch.nn.Parameter] = dict(self.model.named_parameters())
            self._layout = {n: tuple(p.shape) for n, p in self._params.items()}
        else:
            self.model = None
            self._device_map = {"": self.device}
            self._params = {}
            self._layout = self._checkpoint_layout(base_dir)
        self._resident = self._load_resident(resident)
        if self.skeleton:
            self._fill_from_base()
        self.setup_seconds = time.perf_counter() - started

    @classmethod
    def from_spec(cls, spec: Any, *, device: str | None = None, dtype: str | None = None,
                  **kwargs: Any) -> Materializer:
        """A Materializer for a :class:`~mmmo.spec.SearchSpec`'s models and compute settings."""
        kwargs.setdefault("trust_remote_code", spec.compute.trust_remote_code)
        return cls(spec.base, spec.sources, device=device or spec.compute.device,
                   dtype=dtype or spec.compute.dtype, **kwargs)

    # ------------------------------------------------------------------ setup

    def _check_recipe(self, recipe: Recipe) -> None:
        if recipe.base.fingerprint != self.base.fingerprint:
            raise ValueError(f"recipe {recipe.recipe_id}: base {recipe.base.ref} is not this "
                             f"Materializer's base {self.base.ref}")
        for src in recipe.sources:
            if src.fingerprint not in self._by_fingerprint:
                raise ValueError(f"recipe {recipe.recipe_id}: source '{src.label}' "
                                 f"({src.ref}) is not resident in this Materializer")
        if recipe.dtype != self.dtype_name:
            raise ValueError(f"recipe {recipe.recipe_id}: dtype {recipe.dtype} differs from "
                             f"the Materializer's {self.dtype_name}")

    def _config_for(self, recipe: Recipe) -> Any:
        paths = {}
        for model in (recipe.base, *recipe.sources):
            mine = self._by_fingerprint[model.fingerprint]
            paths[model.ref] = str(self._paths[mine.ref])
        return recipe.to_mergekit_config(paths=paths)

    def _plan(self, recipe: Recipe) -> list[Any]:
        """mergekit's tasks for ``recipe``, in the order mergekit-yaml executes them."""
        from mergekit.graph import TaskUniverse, build_schedule
        from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
        from mergekit.options import MergeOptions
        from mergekit.plan import MergePlanner

        config = self._config_for(recipe)
        options = MergeOptions(device=str(self.device), random_seed=recipe.random_seed,
                               quiet=True)
        planner = MergePlanner(config, self.arch_info, options=options,
                               out_model_config=self.config)
        targets = planner.plan_to_disk(out_path="/dev/null/mmmo-unused")  # nothing is written
        tasks = [t for _, t in planner._tensors]
        key = tuple(t.output_weight.name for t in tasks)
        order = self._order_cache.get(key)
        if order is None:
            universe = TaskUniverse(targets)
            handles = [universe.add_task(t) for t in targets]
            schedule = build_schedule(handles, cached_values={})
            position = {name: i for i, name in enumerate(key)}
            order = [position[h.task().output_weight.name] for h in schedule.tasks
                     if isinstance(h.task(), ExecuteMergeMethodTask)]
            self._order_cache[key] = order
        return [tasks[i] for i in order]

    def _input(self, model_path: str, weight: Any, device: torch.device) -> torch.Tensor | None:
        tensors = self._resident[model_path]
        for name in [weight.name, *(weight.aliases or ()), *(weight.tied_names or ())]:
            if name in tensors:
                return tensors[name].to(device, non_blocking=True)
        if weight.optional:
            return None
        raise MergeError(f"{model_path}: tensor {weight.name} required but not resident")

    def merged_tensors(self, recipe: Recipe) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, merged tensor)`` for ``recipe`` (mergekit's math only, no copies).

        Runs under the recipe's seed, in mergekit-yaml's order; each tensor is on the device
        of the parameter it belongs to. The benchmark times this as "the merge math alone".
        """
        self._check_recipe(recipe)
        yield from self._run(recipe, self._plan(recipe))

    def _run(self, recipe: Recipe, tasks: list[Any]) -> Iterator[tuple[str, torch.Tensor]]:
        from mergekit.common import dtype_from_name
        from mergekit.io.tasks import GatherTensors

        devices = {self._device_of(t.output_weight.name) for t in tasks}
        with seeded(devices, recipe.random_seed), torch.no_grad():
            for task in tasks:
                weight = task.output_weight
                dev = self._device_of(weight.name)
                gather = task.gather_tensors
                if not isinstance(gather, GatherTensors):
                    raise MergeError(f"unsupported mergekit input {type(gather).__name__}")
                inputs = {}
                for model, info in gather.weight_info.items():
                    tensor = self._input(model.model.path, info, dev)
                    if tensor is not None:
                        inputs[model] = tensor
                try:
                    merged = task.execute(tensors=inputs)
                except Exception as exc:
                    raise MergeError(f"recipe {recipe.recipe_id}: mergekit failed on "
                                     f"{weight.name}: {exc}".splitlines()[0]) from exc
                if merged is None:
                    continue
                cast = dtype_from_name(weight.force_dtype or None)
                if cast is not None and merged.dtype != cast:
                    merged = merged.to(cast)
                yield weight.name, merged

    def materialize(self, recipe: Recipe) -> MergeResult:
        """Compute ``recipe``'s weights into the resident model; no disk I/O.

        Every parameter is rewritten (merged ones from mergekit, any the plan does not cover
        from the base), so nothing of a previous recipe survives; the same recipe gives
        bit-identical weights whatever ran before.

        Raises:
            ValueError: the recipe's models or dtype are not this Materializer's.
            MergeError: mergekit failed, or the merged weights are not finite.
        """
        self._need_model("materialize")
        self._current = self._last = None
        params = self._params

        def into_params(name: str, tensor: torch.Tensor) -> None:
            params[name].copy_(tensor, non_blocking=True)

        result = dataclasses.replace(self.stream(recipe, into_params), model=self.model)
        self._current, self._last = recipe.recipe_id, result
        return result

    def load_model(self, model: str) -> MergeResult:
        """Put one of the resident models itself (base or a source) into the resident model.

        For scoring the single models beside the merges (no mergekit, no disk): ``model`` is a
        label, ref or fingerprint. ``recipe_id`` of the result is ``model-<fingerprint>``;
        ``sparsity`` is that model's distance to the base.
        """
        self._need_model("load_model")
        self._current = self._last = None
        params = self._params

        def into_params(name: str, tensor: torch.Tensor) -> None:
            params[name].copy_(tensor, non_blocking=True)

        result = dataclasses.replace(self.stream_model(model, into_params), model=self.model)
        self._current, self._last = result.recipe_id, result
        return result

    def _model_entry(self, model: str) -> ModelEntry:
        entry = next((m for m in (self.base, *self.sources)
                      if model in (m.label, m.ref, m.fingerprint)), None)
        if entry is None:
            raise ValueError(f"{model!r} is not a model of this Materializer (known: "
                             f"{[m.label for m in (self.base, *self.sources)]})")
        return entry

    def _need_model(self, what: str) -> None:
        if not self.skeleton:
            raise ValueError(f"{what} needs the resident model: this Materializer was built "
                             "with skeleton=False (use stream / stream_model)")

    def _uncovered_params(self, covered: set[str]) -> list[str]:
        if self._uncovered is None:
            self._uncovered = sorted(set(self._layout) - covered)
            if self._uncovered:
                LOG.warning("mergekit's plan does not produce %s; they keep the base's values",
                            self._uncovered[:5])
        return self._uncovered

    @property
    def current_recipe_id(self) -> str | None:
        """The recipe whose weights the resident model holds (None before the first / on error)."""
        return self._current

    @property
    def last_result(self) -> MergeResult | None:
        """The result of the last successful :meth:`materialize`."""
        return self._last

    @property
    def resident_bytes(self) -> dict[str, int]:
        """Bytes of resident source/base tensors per device."""
        out: dict[str, int] = {}
        for tensors in self._resident.values():
            for t in tensors.values():
                key = str(t.device)
                out[key] = out.get(key, 0) + t.numel() * t.element_size()
        return out

    def close(self) -> None:
        """Drop the resident tensors and model (frees device memory)."""
        self._resident.clear()
        self._params.clear()
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
