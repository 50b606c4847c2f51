"""Content hashes of task references: what a cache key needs to notice a changed task.

A YAML (or ``fixture:``) task hashes its YAML, included YAMLs, ``!function`` modules beside it
and local data files it names; a built-in name hashes the name and lm-eval's version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mmmo.errors import SpecError

__all__ = ["AnyTagLoader", "ref_path", "task_fingerprint"]


class AnyTagLoader(yaml.SafeLoader):
    """Reads lm-eval YAML without running it: ``!function x`` becomes ``["!function", "x"]``."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    value = loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None
    return ["!" + suffix, value]


AnyTagLoader.add_multi_constructor("!", _tag)


@lru_cache(maxsize=1024)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _digest(path: Path) -> str:
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def _data_files(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _data_files(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _data_files(item)


def _walk_tags(value: Any) -> Iterator[str]:
    if isinstance(value, list):
        if len(value) == 2 and value[0] == "!function" and isinstance(value[1], str):
            yield value[1]
        else:
            for item in value:
                yield from _walk_tags(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_tags(item)


def _yaml_digests(path: Path, out: dict[str, str], seen: set[Path]) -> None:
    """Digests of a task YAML, its includes, its ``!function`` modules and local data files."""
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    out[path.name] = _digest(path)
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=AnyTagLoader)  # noqa: S506
    if not isinstance(cfg, dict):
        return
    includes = cfg.get("include") or []
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if inc_path.is_file():
            _yaml_digests(inc_path, out, seen)
    for qual in _walk_tags(cfg):
        module = path.parent / (qual.rsplit(".", 1)[0].replace(".", "/") + ".py")
        if module.is_file():
            out[f"{module.name}"] = _digest(module)
    kwargs = cfg.get("dataset_kwargs") or {}
    candidates = list(_data_files(kwargs.get("data_files"))) if isinstance(kwargs, dict) else []
    if isinstance(cfg.get("dataset_path"), str):
        candidates.append(cfg["dataset_path"])
    for name in candidates:
        for data in (Path(name), path.parent / name):
            if data.is_file():
                out[f"data:{Path(name).name}"] = _digest(data)
                break


def task_fingerprint(ref: str) -> str:
    """A content hash of a task reference (what a cache key needs to notice a changed task).

    A YAML (or ``fixture:``) task hashes its YAML, included YAMLs, ``!function`` modules beside
    it and local data files it names; a built-in name hashes the name and lm-eval's version
    (built-in task configs ship with lm-eval).
    """
    path = ref_path(ref)
    if path is None:
        return hashlib.sha256(f"{ref}@lm_eval=={metadata.version('lm_eval')}".encode()).hexdigest()
    digests: dict[str, str] = {}
    _yaml_digests(path, digests, set())
    text = json.dumps(digests, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def ref_path(ref: str) -> Path | None:
    """The YAML file a reference names, or None for a task name."""
    if ref.startswith("fixture:"):
        return _fixture_path(ref)
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        return Path(ref).expanduser().resolve()
    return None


def _fixture_path(ref: str) -> Path:
    try:
        from mmmo.fixtures import resolve_ref
    except ImportError as exc:
        raise SpecError("task", "fixture references need mmmo.fixtures.resolve_ref",
                        value=ref, fix=f"install the fixtures package ({exc})") from None
    try:
        return Path(resolve_ref(ref)).expanduser().resolve()
    except ValueError:
        from mmmo.fixtures import ensure_family

        known = sorted(r for r in ensure_family().refs() if r.endswith((".yaml", ".yml")))
        raise SpecError("task", "is not a task of the fixture family", value=ref,
                        fix=f"use one of {', '.join(known)}") from None
