"""Export a recipe: an HF model folder plus the mergekit YAML that reproduces it.

The folder holds the merged weights (safetensors), the base's config (dtype set to the
recipe's) and tokenizer, ``mergekit.yaml`` (``mergekit-yaml mergekit.yaml OUT --random-seed
<seed>`` reproduces the weights bit for bit on the same device), ``recipe.json`` (the portable
recipe: refs + fingerprints) and, written last, ``export.json`` (:class:`ExportInfo`). An
export without ``export.json`` is incomplete: local targets are staged in a hidden sibling
folder and renamed into place; remote targets (``s3://`` or any fsspec URL) get every file
first and the marker last.

Two routes produce the weights: a :class:`~mmmo.merging.materialize.Materializer` (the resident
model is saved, the recipe is materialised first unless it is the one the model holds), or,
without one, mergekit's own ``run_merge`` streaming from disk (low memory, any machine).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict

from mmmo.hooks import crash_point
from mmmo.merging.homology import check_homology
from mmmo.merging.models import resolve_local
from mmmo.merging.recipe import Recipe

__all__ = ["MARKER", "ExportInfo", "export", "read_export"]

#: Written last; its presence means the export is complete.
MARKER = "export.json"
_BASE_EXTRAS = ("generation_config.json",)


class ExportInfo(BaseModel):
    """What an export wrote (also the content of its ``export.json``)."""

    model_config = ConfigDict(frozen=True)

    url: str
    recipe_id: str
    route: Literal["materializer", "mergekit"]
    files: dict[str, int]
    """Relative file name -> bytes (the marker excluded)."""
    seconds: float
    sparsity: float | None = None
    created: str
    trust_remote_code: bool = False
    """Whether model code shipped with the models was allowed to run (off unless the spec
    set ``compute.trust_remote_code``); reproducing the merge needs the same choice."""


def export(recipe: Recipe, url: str | os.PathLike[str], *, materializer: Any = None,
           overwrite: bool = False, storage_options: Mapping[str, Any] | None = None,
           device: str = "cpu", trust_remote_code: bool | None = None) -> ExportInfo:
    """Write ``recipe`` as an HF folder + ``mergekit.yaml`` to a path, file:// or s3:// URL.

    Args:
        recipe: The recipe to export.
        url: Target folder: local path, ``file://...``, ``s3://bucket/prefix`` or any fsspec URL.
        materializer: Save from this resident model (materialising ``recipe`` unless it holds
            it already); None runs mergekit's ``run_merge`` from disk instead.
        overwrite: Replace a complete export already at ``url`` (otherwise
            :class:`~mmmo.errors.DestinationExistsError`, a FileExistsError).
        storage_options: fsspec options (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
        device: Math device of the mergekit route.
        trust_remote_code: Let transformers/mergekit run code shipped with the models (None:
            the materializer's setting, else off). Recorded in ``export.json``.

    Returns:
        The :class:`ExportInfo` also written as ``export.json``.
    """
    started = time.perf_counter()
    url = str(url)
    if trust_remote_code is None:
        trust_remote_code = bool(getattr(materializer, "trust_remote_code", False))
    from mmmo.errors import DestinationExistsError
    from mmmo.storage import parse_storage

    url = parse_storage(url, field="export").url  # a malformed URL is no local folder
    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    root = root.rstrip("/")
    marker = f"{root}/{MARKER}"
    if fs.exists(marker) and not overwrite:
        raise DestinationExistsError("export", "a complete export is already there",
                                     value=url, fix="choose another destination, or remove "
                                     "it first (overwrite=True replaces it)")
    local = isinstance(fs, LocalFileSystem)
    parent = Path(root).parent if local else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{Path(root).name}.partial-", dir=parent))
    try:
        if materializer is not None:
            route, sparsity = "materializer", _from_materializer(recipe, materializer, stage)
        else:
            route, sparsity = "mergekit", _from_mergekit(recipe, stage, device,
                                                         trust_remote_code)
        _write_common(recipe, stage)
        files = {p.relative_to(stage).as_posix(): p.stat().st_size
                 for p in sorted(stage.rglob("*")) if p.is_file()}
        info = ExportInfo(url=url, recipe_id=recipe.recipe_id, route=route, files=files,
                          seconds=round(time.perf_counter() - started, 3), sparsity=sparsity,
                          created=datetime.now(UTC).isoformat(timespec="seconds"),
                          trust_remote_code=trust_remote_code)
        body = info.model_dump_json(indent=2)
        crash_point("export:staged")
        if local:
            (stage / MARKER).write_text(body, encoding="utf-8")
            _normal_modes(stage)
            if Path(root).exists():
                shutil.rmtree(root)
            os.replace(stage, root)
        else:
            if fs.exists(root):
                if fs.exists(marker):
                    fs.rm_file(marker)
                fs.rm(root, recursive=True)
            for rel in files:
                fs.put_file(str(stage / rel), f"{root}/{rel}")
            crash_point("export:uploaded")
            fs.pipe_file(marker, body.encode("utf-8"))
        return info
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _normal_modes(folder: Path) -> None:
    """Give a staged folder the modes a plain ``mkdir``/``open`` would (mkdtemp uses 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def read_export(url: str | os.PathLike[str], *,
                storage_options: Mapping[str, Any] | None = None) -> ExportInfo | None:
    """The :class:`ExportInfo` of a complete export at ``url``, or None (absent/incomplete)."""
    fs, root = fsspec.core.url_to_fs(str(url), **dict(storage_options or {}))
    marker = f"{root.rstrip('/')}/{MARKER}"
    if not fs.exists(marker):
        return None
    return ExportInfo.model_validate_json(fs.cat_file(marker))


def _from_materializer(recipe: Recipe, materializer: Any, stage: Path) -> float | None:
    sparsity = None
    if materializer.current_recipe_id != recipe.recipe_id:
        sparsity = materializer.materialize(recipe).sparsity
    elif materializer.last_result is not None:
        sparsity = materializer.last_result.sparsity
    model = materializer.model
    model.config.dtype = recipe.dtype
    model.save_pretrained(str(stage), safe_serialization=True)
    materializer.tokenizer.save_pretrained(str(stage))
    _copy_base_extras(materializer.base_dir, stage)
    return sparsity


def _from_mergekit(recipe: Recipe, stage: Path, device: str,
                   trust_remote_code: bool = False) -> None:
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoConfig, AutoTokenizer

    check_homology(recipe.base, recipe.sources)
    base_dir = resolve_local(recipe.base.ref, recipe.base.revision)
    options = MergeOptions(device=device, random_seed=recipe.random_seed, copy_tokenizer=False,
                           write_model_card=False, quiet=True,
                           trust_remote_code=trust_remote_code)
    with _global_rng_preserved():
        run_merge(recipe.to_mergekit_config(), str(stage), options)
    config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=trust_remote_code)
    config.dtype = recipe.dtype
    config.save_pretrained(str(stage))
    AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=trust_remote_code
                                  ).save_pretrained(str(stage))
    _copy_base_extras(base_dir, stage)
    return None


def _write_common(recipe: Recipe, stage: Path) -> None:
    (stage / "mergekit.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    (stage / "recipe.json").write_text(
        json.dumps(recipe.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")


def _copy_base_extras(base_dir: Path, stage: Path) -> None:
    for name in _BASE_EXTRAS:
        if (Path(base_dir) / name).is_file():
            shutil.copyfile(Path(base_dir) / name, stage / name)


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """``run_merge`` reseeds every global RNG; give callers theirs back afterwards."""
    import numpy as np
    import torch

    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
