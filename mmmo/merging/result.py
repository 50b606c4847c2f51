"""What a materialisation returns, and the sparsity objective it sums on the way."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from mmmo.errors import MergeError

__all__ = ["MergeResult", "add_sum", "injected_merge_fault", "l1", "sparsity_group"]

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


def add_sum(sums: dict[str, torch.Tensor], group: str, value: torch.Tensor) -> None:
    sums[group] = sums[group] + value if group in sums else value


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum |a - b|``: fp32 sums over chunks of 64M elements, added in fp64 (on a's device)."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.numel(), _CHUNK):
        diff = a[i:i + _CHUNK].to(torch.float32) - b[i:i + _CHUNK].to(torch.float32)
        total += diff.abs_().sum()
    return total


def injected_merge_fault(recipe_id: str) -> None:
    """Raise the merge failure ``MMMO_FAULTS`` injects for this recipe, if any (tests only)."""
    from mmmo.hooks import merge_fault

    message = merge_fault(recipe_id)
    if message is not None:
        raise MergeError(message)
