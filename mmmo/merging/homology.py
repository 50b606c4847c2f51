"""Homology check: can these models be merged tensor by tensor? Configs and headers only.

Runs before any expensive work (no weight is loaded): it reads each model's ``config.json``,
its safetensors headers and its tokenizer vocabulary, and fails on the first difference with a
one-line :class:`~mmmo.errors.HomologyError` naming the model and what differs, e.g.::

    source 'rev' (/models/rev): tensor model.layers.1.mlp.up_proj.weight has shape [96, 64],
    the base has [128, 64]
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mmmo.errors import HomologyError
from mmmo.merging.models import TensorHeader, read_tensor_headers, resolve_local

__all__ = ["STRUCTURAL_CONFIG_KEYS", "check_homology", "layer_count"]

#: config.json fields that must agree (when either model sets them); others may differ.
STRUCTURAL_CONFIG_KEYS = (
    "model_type",
    "tie_word_embeddings",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "hidden_act",
)


class _ModelLike(Protocol):
    path: str
    revision: str | None

    @property
    def label(self) -> str: ...



_SAME_FAMILY = ("use only fine-tunes of the base (same architecture, tensor names and shapes, "
                "vocabulary)")
_READABLE = ("check the path, or put the hub model in the local cache (HF_HUB_OFFLINE=0 "
             "downloads it)")


def check_homology(base: str | _ModelLike, sources: Sequence[str | _ModelLike], *,
                   fields: Sequence[str] | None = None) -> None:
    """Check that every source has the base's architecture, tensors and vocabulary.

    Args:
        base: The base model: a ref string or anything with ``path``/``revision``/``label``
            (a :class:`~mmmo.spec.ModelSpec` or a recipe's model entry).
        sources: The models merged into the base.
        fields: The spec fields of ``[base, *sources]`` (e.g. ``base.path``,
            ``sources[0].path``): the error then names the field of the model at fault.

    Raises:
        HomologyError: one line naming the first model that differs and the first differing
            config field, tensor (missing, unexpected, or shape) or vocabulary entry
            (``unreadable`` when a model cannot be read at all).
    """
    try:
        _check(base, sources)
    except _Mismatch as exc:
        index, who, problem, unreadable, *own = exc.args
        fix = (own[0] if own and own[0] else _READABLE) if unreadable else _SAME_FAMILY
        if fields is None:
            raise HomologyError(who, problem, fix=fix, unreadable=unreadable) from None
        raise HomologyError(fields[index], f"{who}: {problem}", fix=fix,
                            unreadable=unreadable) from None


def layer_count(model: str | _ModelLike) -> int | None:
    """The model's number of decoder layers from its ``config.json`` (None if not stated).

    Raises:
        HomologyError: the model cannot be read.
    """
    ref, revision, _ = _describe(model)
    try:
        cfg = _config(_local(ref, revision, 0, f"model ({ref})"), 0, f"model ({ref})")
    except _Mismatch as exc:
        _, who, problem, _, *own = exc.args
        raise HomologyError(who, problem, fix=(own[0] if own and own[0] else _READABLE),
                            unreadable=True) from None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


class _Mismatch(Exception):
    """(index in [base, *sources], who, problem, unreadable[, the model error's own fix])."""


def _check(base: str | _ModelLike, sources: Sequence[str | _ModelLike]) -> None:
    base_ref, base_rev, _ = _describe(base)
    who = f"base ({base_ref})"
    base_dir = _local(base_ref, base_rev, 0, who)
    base_cfg = _config(base_dir, 0, who)
    base_tensors = _headers(base_dir, 0, who)
    base_vocab = _vocabulary(base_dir)
    for i, src in enumerate(sources, start=1):
        ref, rev, label = _describe(src)
        who = f"source '{label}' ({ref})"
        folder = _local(ref, rev, i, who)
        try:
            _compare_config(base_cfg, _config(folder, i, who))
            _compare_tensors(base_tensors, _headers(folder, i, who))
            _compare_vocab(base_vocab, _vocabulary(folder))
        except _Differs as exc:
            raise _Mismatch(i, who, str(exc), False) from None


class _Differs(Exception):
    """What differs from the base (one line)."""


def _describe(model: Any) -> tuple[str, str | None, str]:
    if isinstance(model, str):
        return model, None, model.rstrip("/").split("/")[-1].split(":")[-1]
    ref = getattr(model, "path", None) or model.ref
    return ref, getattr(model, "revision", None), model.label


def _local(ref: str, revision: str | None, index: int, who: str) -> Path:
    try:
        return resolve_local(ref, revision)
    except FileNotFoundError as exc:  # ModelUnavailableError, or a plain one
        problem = getattr(exc, "problem", None) or str(exc)
        own = getattr(exc, "fix", None) if not ref.startswith("fixture:") else None
        raise _Mismatch(index, who, f"cannot be read: {problem}", True, own) from None


def _config(folder: Path, index: int, who: str) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Mismatch(index, who, f"cannot be read: config.json: {exc}", True) from None
    if not isinstance(cfg, dict):
        raise _Mismatch(index, who, "cannot be read: config.json is not a JSON object", True)
    return cfg.get("text_config", cfg) | {"model_type": cfg.get("model_type"),
                                         "architectures": cfg.get("architectures")}


def _headers(folder: Path, index: int, who: str) -> dict[str, TensorHeader]:
    try:
        return read_tensor_headers(folder)
    except (FileNotFoundError, ValueError, OSError) as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise _Mismatch(index, who, f"cannot be read: {problem}", True,
                        getattr(exc, "fix", None)) from None


def _compare_config(base: dict[str, Any], other: dict[str, Any]) -> None:
    arch_b, arch_o = (base.get("architectures") or [None])[0], (other.get("architectures")
                                                               or [None])[0]
    if arch_b != arch_o:
        raise _Differs(f"architecture {arch_o} differs from the base's {arch_b}")
    for key in STRUCTURAL_CONFIG_KEYS:
        if (key in base or key in other) and base.get(key) != other.get(key):
            raise _Differs(f"config field {key} is {other.get(key)!r}, "
                           f"the base has {base.get(key)!r}")


def _natural(name: str) -> list[Any]:
    """Sort key reading layer indices as numbers (layers.2 before layers.10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _compare_tensors(base: dict[str, TensorHeader], other: dict[str, TensorHeader]) -> None:
    for name in sorted(set(base) | set(other), key=_natural):
        if name not in other:
            raise _Differs(f"tensor {name} is missing (the base has it)")
        if name not in base:
            raise _Differs(f"tensor {name} is not in the base")
        if base[name].shape != other[name].shape:
            raise _Differs(f"tensor {name} has shape {list(other[name].shape)}, "
                           f"the base has {list(base[name].shape)}")


def _vocabulary(folder: Path) -> dict[str, int] | str | None:
    """token -> id from tokenizer.json, else a digest of tokenizer.model, else None."""
    tok = folder / "tokenizer.json"
    if tok.is_file():
        data = json.loads(tok.read_text(encoding="utf-8"))
        vocab = (data.get("model") or {}).get("vocab")
        out: dict[str, int] = {}
        if isinstance(vocab, dict):
            out.update(vocab)
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            out.update({entry[0]: i for i, entry in enumerate(vocab)})
        for added in data.get("added_tokens") or []:
            out[added["content"]] = added["id"]
        return out
    spm = folder / "tokenizer.model"
    if spm.is_file():
        import hashlib

        return hashlib.sha256(spm.read_bytes()).hexdigest()
    return None


def _compare_vocab(base: dict[str, int] | str | None, other: dict[str, int] | str | None) -> None:
    """Every base token must keep its id; a source may add tokens (the base's tokenizer is used)."""
    if base is None or other is None:
        return
    if isinstance(base, str) or isinstance(other, str):
        if base != other:
            raise _Differs("tokenizer differs from the base's (tokenizer.model or "
                           "tokenizer.json differ)")
        return
    by_id = {i: t for t, i in other.items()}
    for token, idx in sorted(base.items(), key=lambda kv: kv[1]):
        if other.get(token) != idx:
            found = f"id {other[token]}" if token in other else "no id"
            theirs = f"; its id {idx} is {by_id[idx]!r}" if idx in by_id else ""
            raise _Differs(f"vocabulary differs from the base's at token {token!r} "
                           f"(base id {idx}, source {found}{theirs})")
