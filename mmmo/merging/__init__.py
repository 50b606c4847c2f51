"""Merging: recipes through mergekit, materialised in memory, exported so mergekit reproduces them.

Prefect-free. The pieces:

* :mod:`~mmmo.merging.recipe` -- :class:`Recipe` (one mergekit merge, ``recipe_id``, YAML);
* :mod:`~mmmo.merging.models` -- refs, :func:`model_fingerprint`, safetensors headers;
* :mod:`~mmmo.merging.homology` -- :func:`check_homology` (configs + headers, no weights);
* :mod:`~mmmo.merging.materialize` -- :class:`Materializer` (resident model, in-memory merges,
  sparsity while merging);
* :mod:`~mmmo.merging.export` -- :func:`export` (HF folder + mergekit YAML, any fsspec URL).

The search space (x in [0, 1]^d <-> Recipe) is :class:`mmmo.space.SearchSpace`. Names are
imported lazily, so ``import mmmo.merging.models`` does not pull in torch or mergekit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmmo.merging.export import ExportInfo, export, read_export
    from mmmo.merging.homology import check_homology
    from mmmo.merging.materialize import Materializer, MergeError, MergeResult, sparsity_group
    from mmmo.merging.models import model_fingerprint, resolve_local
    from mmmo.merging.recipe import ModelEntry, Recipe, is_random_method

_EXPORTS = {
    "ExportInfo": "export",
    "export": "export",
    "read_export": "export",
    "check_homology": "homology",
    "Materializer": "materialize",
    "MergeError": "materialize",
    "MergeResult": "materialize",
    "sparsity_group": "materialize",
    "model_fingerprint": "models",
    "resolve_local": "models",
    "ModelEntry": "recipe",
    "Recipe": "recipe",
    "is_random_method": "recipe",
}

__all__ = [
    "ExportInfo",
    "Materializer",
    "MergeError",
    "MergeResult",
    "ModelEntry",
    "Recipe",
    "check_homology",
    "export",
    "is_random_method",
    "model_fingerprint",
    "read_export",
    "resolve_local",
    "sparsity_group",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmmo.merging' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mmmo.merging.{module}"), name)
