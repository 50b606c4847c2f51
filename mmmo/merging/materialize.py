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

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mmmo.errors import MergeError
from mmmo.hooks import crash_point
from mmmo.merging.homology import check_homology
from mmmo.merging.models import read_tensor_headers, resolve_local
from mmmo.merging.recipe import ModelEntry, Recipe, _entry
from mmmo.merging.rng import seeded

__all__ = ["MergeError", "MergeResult", "Materializer", "sparsity_group"]

LOG = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHUNK = 1 << 26
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def sparsity_group(name: str) -> str:
    """The sparsity group of a parameter: ``layers.<i>`` inside a decoder layer, else its module.

    ``model.layers.3.mlp.up_proj.weight`` -> ``layers.3``; ``model.embed_tokens.weight`` ->
    ``embed_tokens``; ``model.norm.weight`` -> ``norm``; ``lm_head.weight`` -> ``lm_head``.
    """
    match = _LAYER.search(name)
    if match:
        return f"layers.{match.group(1)}"
    parts = name.split(".")
    if parts[0] == "model" and len(parts) > 2:
        parts = parts[1:]
    return ".".join(parts[:-1]) or name


@dataclass
class MergeResult:
    """What :meth:`Materializer.materialize` returns.

    Attributes:
        model: The resident torch model, now holding the recipe's weights (valid until the
            next ``materialize`` on the same Materializer).
        tokenizer: The base's tokenizer.
        sparsity: ``sum |merged - base|`` over all parameters (fp32 per tensor, fp64 total).
        sparsity_by_group: The same sum per :func:`sparsity_group` (the values add up to
            ``sparsity``).
        seconds: Wall time of the materialisation.
        recipe_id: The recipe's id.
        timings: ``plan`` / ``merge`` seconds (merge includes copies and the sparsity sums).
    """

    model: Any
    tokenizer: Any
    sparsity: float
    sparsity_by_group: dict[str, float]
    seconds: float
    recipe_id: str
    timings: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The JSON-able part: ``recipe_id``, ``sparsity``, ``sparsity_by_group``, ``seconds``,
        ``timings`` (what a trial records; the model stays in memory)."""
        return {"recipe_id": self.recipe_id, "sparsity": self.sparsity,
                "sparsity_by_group": dict(self.sparsity_by_group), "seconds": self.seconds,
                "timings": dict(self.timings)}


def _resolve_device(device: str | torch.device) -> torch.device:
    device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class Materializer:
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
        self.device = _resolve_device(device)
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
        self.config = _with_architectures(AutoConfig.from_pretrained(
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

    def _skeleton(self, max_memory: dict[Any, Any] | None) -> torch.nn.Module:
        """The model with parameters on their devices (contents: uninitialised until filled)."""
        from accelerate import init_empty_weights
        from accelerate.utils import set_module_tensor_to_device
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype,
                                                     trust_remote_code=self.trust_remote_code)
        self._device_map = self._plan_devices(model, max_memory)
        tied = set(getattr(model, "_tied_weights_keys", None) or {}) if getattr(
            self.config, "tie_word_embeddings", False) else set()
        for name, param in list(model.named_parameters()):
            if name in tied:
                continue
            dev = self._device_of(name)
            set_module_tensor_to_device(model, name, dev,
                                        value=torch.empty(param.shape, dtype=self.dtype,
                                                          device=dev))
        if tied:
            model.tie_weights()
        devices = set(self._device_map.values())
        if len(devices) > 1:
            from accelerate import dispatch_model

            model = dispatch_model(model, device_map=self._device_map)
        else:
            model.to(self.device)
        missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
        if missing:
            raise MergeError(f"model skeleton left parameters unplaced: {missing[:3]}")
        return model.eval().requires_grad_(False)

    def _plan_devices(self, model: torch.nn.Module, max_memory: dict[Any, Any] | None
                      ) -> dict[str, torch.device]:
        """Module -> device. One device unless it is CUDA, several GPUs exist and it is full."""
        single = {"": self.device}
        if self.device.type != "cuda" or torch.cuda.device_count() < 2:
            return single
        need = sum(p.numel() for p in model.parameters()) * self.dtype.itemsize
        free, _ = torch.cuda.mem_get_info(self.device)
        if need < 0.8 * free and max_memory is None:
            return single
        from accelerate import infer_auto_device_map

        mapping = infer_auto_device_map(model, max_memory=max_memory, dtype=self.dtype,
                                        no_split_module_classes=model._no_split_modules)
        out = {}
        for module, dev in mapping.items():
            if dev in ("disk", "cpu"):
                raise MergeError("the model does not fit the GPUs (accelerate would offload "
                                 f"{module} to {dev}); use fewer sources or a smaller dtype")
            out[module] = torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
        LOG.info("multi-GPU placement: %s", out)
        return out

    def _device_of(self, name: str) -> torch.device:
        best, dev = -1, self.device
        for module, d in self._device_map.items():
            if (module == "" or name == module or name.startswith(module + ".")) \
                    and len(module) > best:
                best, dev = len(module), d
        return dev

    def _checkpoint_layout(self, base_dir: Any) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape without a model: the base checkpoint's tensors, less an
        output embedding tied to a tensor the checkpoint has (mergekit's ``tied_names``)."""
        heads = read_tensor_headers(base_dir)
        tied: set[str] = set()
        if getattr(self.config, "tie_word_embeddings", False):
            for weight in self.arch_info.all_weights(self.config):
                if weight.tied_names and any(t in heads for t in weight.tied_names):
                    tied.add(weight.name)
        return {name: tuple(h.shape) for name, h in heads.items() if name not in tied}

    def _load_resident(self, policy: str) -> dict[str, dict[str, torch.Tensor]]:
        """``{local path: {tensor name: tensor}}`` for base and sources, read once."""
        from safetensors import safe_open

        budget = self._device_budget(policy)
        pin = torch.cuda.is_available() and self.device.type == "cuda"
        out: dict[str, dict[str, torch.Tensor]] = {}
        for model in (self.base, *self.sources):
            folder = self._paths[model.ref]
            tensors: dict[str, torch.Tensor] = {}
            by_file: dict[str, list[str]] = {}
            for name, head in read_tensor_headers(folder).items():
                by_file.setdefault(head.file, []).append(name)
            for file, names in sorted(by_file.items()):
                with safe_open(str(folder / file), framework="pt", device="cpu") as fh:
                    for name in names:
                        # get_tensor maps the file: copy, so the tensors are really resident
                        # (no page-cache re-reads, no surprise if the file is rewritten)
                        tensor = fh.get_tensor(name)
                        dev = self._device_of(name)
                        size = tensor.numel() * self.dtype.itemsize
                        if dev.type != "cpu" and budget.get(dev, 0) >= size:
                            budget[dev] -= size
                            tensor = tensor.to(dev, self.dtype)
                        elif pin:
                            tensor = tensor.to(self.dtype).pin_memory()
                        else:
                            tensor = tensor.to(self.dtype, copy=True)
                        tensors[name] = tensor
            out[str(folder)] = tensors
        return out

    def _device_budget(self, policy: str) -> dict[torch.device, int]:
        """Bytes of resident tensors each math device may take."""
        devices = set(self._device_map.values())
        if policy == "cpu":
            return {}
        if policy == "device" or any(d.type not in ("cuda",) for d in devices):
            return {d: 1 << 62 for d in devices}
        largest = max(p.numel() for p in self._params.values()) if self._params else max(
            math.prod(shape) for shape in self._layout.values())
        n = len(self.sources)
        # mergekit's per-tensor workspace for the largest tensor: the stacked deltas, their
        # weighted/masked copies and signs (~3n tensors), a few single temporaries, the bool
        # consensus mask, and the fp32 chunks of the sparsity sum
        workspace = ((3 * n + 4) * self.dtype.itemsize + n + 8) * largest
        budget = {}
        for dev in devices:
            free, _ = torch.cuda.mem_get_info(dev)
            budget[dev] = max(0, int(free * 0.95) - workspace)
        return budget

    def _fill_from_base(self) -> None:
        base = self._resident[str(self._paths[self.base.ref])]
        with torch.no_grad():
            for name, param in self._params.items():
                if name not in base:
                    raise MergeError(f"base has no tensor {name} that the model needs")
                param.copy_(base[name], non_blocking=True)

    # ------------------------------------------------------------------ merging

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
        started = time.perf_counter()
        self._need_model("materialize")
        self._check_recipe(recipe)
        with self._lock:
            self._current = self._last = None
            _injected_merge_fault(recipe.recipe_id)
            sums: dict[str, torch.Tensor] = {}
            covered: set[str] = set()
            base = self._resident[str(self._paths[self.base.ref])]
            tasks = self._plan(recipe)
            plan_done = time.perf_counter()
            with torch.no_grad():
                for i, (name, merged) in enumerate(self._run(recipe, tasks)):
                    if i == len(tasks) // 2:
                        crash_point("merge:halfway")
                    param = self._params.get(name)
                    if param is None:  # e.g. lm_head of a tied model: not a separate parameter
                        continue
                    param.copy_(merged, non_blocking=True)
                    covered.add(name)
                    ref = base[name].to(param.device, non_blocking=True)
                    group = sparsity_group(name)
                    value = _l1(param, ref)
                    sums[group] = sums[group] + value if group in sums else value
                    del merged
                for name in self._uncovered_params(covered):
                    self._params[name].copy_(base[name], non_blocking=True)
                    sums.setdefault(sparsity_group(name),
                                    torch.zeros((), dtype=torch.float64,
                                                device=self._params[name].device))
            by_group = {g: float(v) for g, v in sums.items()}
            total = float(sum(by_group.values()))
            if not torch.isfinite(torch.tensor(total)):
                bad = [g for g, v in by_group.items() if not torch.isfinite(torch.tensor(v))]
                raise MergeError(f"recipe {recipe.recipe_id}: merged weights are not finite "
                                 f"(groups {bad[:5]}); e.g. linear with all weights 0 and "
                                 "normalize, or an overflow in float16")
            done = time.perf_counter()
            result = MergeResult(model=self.model, tokenizer=self.tokenizer, sparsity=total,
                                 sparsity_by_group=by_group, seconds=done - started,
                                 recipe_id=recipe.recipe_id,
                                 timings={"plan": plan_done - started,
                                          "merge": done - plan_done})
            self._current, self._last = recipe.recipe_id, result
        return result

    def load_model(self, model: str) -> MergeResult:
        """Put one of the resident models itself (base or a source) into the resident model.

        For scoring the single models beside the merges (no mergekit, no disk): ``model`` is a
        label, ref or fingerprint. ``recipe_id`` of the result is ``model-<fingerprint>``;
        ``sparsity`` is that model's distance to the base.
        """
        started = time.perf_counter()
        self._need_model("load_model")
        entry = self._model_entry(model)
        with self._lock, torch.no_grad():
            self._current = self._last = None
            tensors = self._resident[str(self._paths[entry.ref])]
            base = self._resident[str(self._paths[self.base.ref])]
            sums: dict[str, torch.Tensor] = {}
            for name, param in self._params.items():
                param.copy_(tensors[name], non_blocking=True)
                group = sparsity_group(name)
                value = _l1(param, base[name].to(param.device, non_blocking=True))
                sums[group] = sums[group] + value if group in sums else value
            by_group = {g: float(v) for g, v in sums.items()}
            seconds = time.perf_counter() - started
            result = MergeResult(model=self.model, tokenizer=self.tokenizer,
                                 sparsity=float(sum(by_group.values())),
                                 sparsity_by_group=by_group, seconds=seconds,
                                 recipe_id=f"model-{entry.fingerprint}",
                                 timings={"plan": 0.0, "merge": seconds})
            self._current, self._last = result.recipe_id, result
        return result

    # ------------------------------------------------------------------ streaming

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
            _injected_merge_fault(recipe.recipe_id)
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
                    _add(sums, sparsity_group(name), _l1(tensor, ref))
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
                _add(sums, sparsity_group(name),
                     _l1(tensor, base[name].to(tensor.device, non_blocking=True)))
                sink(name, tensor)
            by_group = {g: float(v) for g, v in sums.items()}
            seconds = time.perf_counter() - started
            return MergeResult(model=None, tokenizer=self.tokenizer,
                               sparsity=float(sum(by_group.values())),
                               sparsity_by_group=by_group, seconds=seconds,
                               recipe_id=f"model-{entry.fingerprint}",
                               timings={"plan": 0.0, "merge": seconds})

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


def _with_architectures(config: Any) -> Any:
    """``config`` with ``architectures`` set (mergekit needs it; some configs omit it).

    A config saved without ``architectures`` gets the causal-LM class transformers maps its
    ``model_type`` to. mergekit-yaml itself would refuse such a folder (it reads
    ``architectures`` of every model); the in-memory route and its exports do not need it.
    """
    if getattr(config, "architectures", None):
        return config
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
    if name is None:
        raise MergeError(f"config of model_type {config.model_type!r} names no architectures "
                         "and transformers maps no causal LM to it")
    LOG.warning("config.json has no 'architectures'; using %s (mergekit-yaml needs the field "
                "in the model folders)", name)
    config.architectures = [name]
    return config


def _add(sums: dict[str, torch.Tensor], group: str, value: torch.Tensor) -> None:
    sums[group] = sums[group] + value if group in sums else value


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum |a - b|``: fp32 sums over chunks of 64M elements, added in fp64 (on a's device)."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.numel(), _CHUNK):
        diff = a[i:i + _CHUNK].to(torch.float32) - b[i:i + _CHUNK].to(torch.float32)
        total += diff.abs_().sum()
    return total


def _injected_merge_fault(recipe_id: str) -> None:
    """Raise the merge failure ``MMMO_FAULTS`` injects for this recipe, if any (tests only)."""
    from mmmo.hooks import merge_fault

    message = merge_fault(recipe_id)
    if message is not None:
        raise MergeError(message)
