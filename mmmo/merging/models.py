"""Model references: where a model's files are, what it is (fingerprint), what it holds (headers).

A reference is ``fixture:models/<name>`` (the bundled family, resolved by
:func:`mmmo.fixtures.resolve_ref`), a local HF folder, or a hub id (``org/name``, with an
optional revision). Nothing here loads weights: headers are read from safetensors files (8 bytes
of length + a JSON header) and fingerprints sample a few blocks of each weight file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from mmmo.errors import ModelUnavailableError

__all__ = [
    "TensorHeader",
    "is_hub_id",
    "model_fingerprint",
    "read_tensor_headers",
    "resolve_local",
]

#: Files of a model folder that are hashed whole into its fingerprint (small, JSON or text).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
#: config.json keys that describe how a file was written, not the model.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLE_BLOCKS = 16
_BLOCK = 64 * 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class TensorHeader:
    """A tensor as a safetensors header describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str


def is_hub_id(ref: str) -> bool:
    """True when ``ref`` is neither a fixture ref nor an existing local path."""
    return (not ref.startswith("fixture:") and not Path(ref).expanduser().exists()
            and _HUB.match(ref) is not None)


def resolve_local(ref: str, revision: str | None = None) -> Path:
    """The local folder holding ``ref``'s files.

    ``fixture:`` refs go through :func:`mmmo.fixtures.resolve_ref`; local folders are returned
    as absolute paths; hub ids resolve to their snapshot in the Hugging Face cache (downloaded
    only when ``HF_HUB_OFFLINE`` allows it; mm-mo defaults to offline).

    Raises:
        ModelUnavailableError: (a FileNotFoundError) the folder does not exist, the fixture
            ref is unknown, or the hub model is not cached.
    """
    if ref.startswith("fixture:"):
        from mmmo.fixtures import resolve_ref

        try:
            return Path(resolve_ref(ref)).resolve()
        except ValueError as exc:  # unknown fixture name: one "not found" error type for all
            raise ModelUnavailableError(ref, str(exc), fix="use one of the refs listed") \
                from None
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(ref, "no config.json in this folder",
                                        fix="point it at an HF model folder")
        return path.resolve()
    if not is_hub_id(ref):
        raise ModelUnavailableError(ref, "neither a local model folder nor a hub id",
                                    fix="check the path, or write a hub id like 'org/name'")
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(
            ref, revision=revision,
            allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"],
        ))
    except Exception as exc:  # LocalEntryNotFoundError, network errors, ...
        raise ModelUnavailableError(
            f"{ref}@{revision or 'main'}", f"not in the local Hugging Face cache "
            f"({type(exc).__name__})", fix="download it first, or set HF_HUB_OFFLINE=0"
        ) from None


def model_fingerprint(ref: str, *, revision: str | None = None) -> str:
    """A short, stable identity of a model's files (16 hex characters).

    * Local folder (and ``fixture:`` refs): SHA-256 over config.json (canonical JSON without
      ``_name_or_path``/``transformers_version``), the tokenizer files listed in
      :data:`TOKENIZER_FILES` (whole), and, per weight file (sorted by name): its name, its
      size, its safetensors header, and 16 blocks of 64 KiB at evenly spaced offsets (whole file
      when below 1 MiB). Reads about 1 MiB per weight file: no hashing of GBs of weights, yet two
      fine-tunes of one base (identical headers and sizes) differ in the sampled bytes.
    * Hub id: ``revision`` when it is a 40-hex commit, else the commit the local cache has for
      ``revision`` (default ``main``), else the given ``revision`` as written, else the hub's
      answer for ``main`` when online. Pin commits for identities that survive new pushes.

    The same files give the same fingerprint in any process, path or machine (no mtimes).

    Raises:
        ModelUnavailableError: (a FileNotFoundError) a local ref without files, or a hub id
            whose commit cannot be known.
    """
    if ref.startswith("fixture:") or Path(ref).expanduser().exists():
        return _folder_fingerprint(resolve_local(ref))
    if not is_hub_id(ref):
        raise ModelUnavailableError(ref, "neither a local model folder nor a hub id",
                                    fix="check the path, or write a hub id like 'org/name'")
    commit = _hub_commit(ref, revision)
    return hashlib.sha256(f"hub:{ref}@{commit}".encode()).hexdigest()[:16]


def _hub_commit(repo: str, revision: str | None) -> str:
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    ref_file = cache / "refs" / (revision or "main")
    if ref_file.is_file():
        return ref_file.read_text().strip()
    if revision:
        return revision
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True", "YES", "yes"):
        from huggingface_hub import HfApi

        info = HfApi().model_info(repo, revision=revision)
        if info.sha:
            return info.sha
    raise ModelUnavailableError(f"{repo}@{revision or 'main'}", "commit unknown offline",
                                fix="pin revision to a 40-hex commit, or cache the model first")


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    digest.update(b"config\0" + json.dumps(config, sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            digest.update(f"\0file\0{name}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    for path in _weight_files(folder):
        size = path.stat().st_size
        digest.update(f"\0weights\0{path.name}\0{size}\0".encode())
        with path.open("rb") as fh:
            if size <= _SAMPLE_BLOCKS * _BLOCK:
                digest.update(fh.read())
                continue
            for i in range(_SAMPLE_BLOCKS):
                fh.seek(i * (size - _BLOCK) // (_SAMPLE_BLOCKS - 1))
                digest.update(fh.read(_BLOCK))
            if path.suffix == ".safetensors":
                fh.seek(0)
                (length,) = struct.unpack("<Q", fh.read(8))
                digest.update(fh.read(length))
    return digest.hexdigest()[:16]


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" and p.is_file())
    if not files:
        files = sorted(p for p in folder.iterdir()
                       if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    return files


def read_tensor_headers(folder: str | Path) -> dict[str, TensorHeader]:
    """Name -> dtype/shape/file of every tensor in a folder's safetensors files (no weights read).

    Raises:
        ModelUnavailableError: (a FileNotFoundError) the folder holds no ``*.safetensors``
            file.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        raise ModelUnavailableError(str(folder), "no safetensors weights (only safetensors "
                                    "checkpoints can be checked and merged in memory)",
                                    fix="convert the checkpoint to safetensors")
    out: dict[str, TensorHeader] = {}
    for path in files:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            out[name] = TensorHeader(name=name, dtype=info["dtype"],
                                     shape=tuple(info["shape"]), file=path.name)
    return out
