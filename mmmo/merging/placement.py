"""Where a Materializer's models live: the skeleton's parameters on their devices (one device,
or an accelerate device map across GPUs), the resident base and sources (on the math device
within a memory budget, the rest in pinned host memory), the checkpoint's tensor layout."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from mmmo.errors import MergeError
from mmmo.merging.models import read_tensor_headers

__all__ = ["Placement", "resolve_device", "with_architectures"]

LOG = logging.getLogger("mmmo.merging.materialize")


def resolve_device(device: str | torch.device) -> torch.device:
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


class Placement:
    """The placement half of :class:`~mmmo.merging.materialize.Materializer` (a mixin: it
    uses the attributes the Materializer sets in ``__init__``)."""

    config: Any
    dtype: torch.dtype
    device: torch.device
    base: Any
    sources: tuple[Any, ...]
    trust_remote_code: bool
    _paths: dict[str, Any]
    _device_map: dict[str, torch.device]
    _resident: dict[str, dict[str, torch.Tensor]]
    _params: dict[str, torch.nn.Parameter]

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


def with_architectures(config: Any) -> Any:
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
