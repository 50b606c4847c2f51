"""Merged weights into a running engine, in place: safetensors on shared memory + ``reload_weights``.

:class:`ShmCheckpoint` is one safetensors file in a fresh folder under ``/dev/shm`` (tmpfs:
RAM, never persistent disk). Its header is written first, from the parameter layout; the space
is reserved with ``posix_fallocate`` (a full tmpfs is an error here, not a SIGBUS later); then
each merged tensor is copied straight from the math device into its slot of the memory-mapped
file as :meth:`Materializer.stream` hands it out, so the whole merged model never exists in
this process as tensors. :func:`load_into_engine` then asks the engine to read it
(``POST /collective_rpc`` ``reload_weights`` with ``weights_path``: vLLM's in-place reload,
which also re-runs the CPU backend's weight repacking) and drops its prefix cache
(``POST /reset_prefix_cache``: cached KV blocks belong to the previous weights). The caller
removes the folder right after (:meth:`ShmCheckpoint.remove`).

The safetensors format is written by hand (8-byte header length, JSON header, raw bytes)
because the ``safetensors`` library can only save a complete dict of tensors, which would double
the host memory of the merged model; every file written here is read back by ``safe_open`` in
the tests.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from mmmo.evaluation.vllm.client import post_json

__all__ = ["ShmCheckpoint", "load_into_engine", "sweep_stale"]

_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
FILE_NAME = "model.safetensors"


class ShmCheckpoint:
    """A safetensors checkpoint on shared memory, written tensor by tensor.

    Args:
        root: Where the folder is created (``compute.vllm.shm_dir``, default ``/dev/shm``).
        layout: ``{name: (shape, dtype)}`` of every tensor that will be put.

    Raises:
        OSError: ``root`` has no room for the checkpoint (ENOSPC), or is not writable.
    """

    def __init__(self, root: str | Path,
                 layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"mmmo-weights-{os.getpid()}-", dir=root))
        self.path = self.folder / FILE_NAME
        self._layout = {name: (tuple(shape), dtype) for name, (shape, dtype) in layout.items()}
        header: dict[str, object] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name in sorted(self._layout):
            shape, dtype = self._layout[name]
            if dtype not in _ST_DTYPES:
                raise ValueError(f"{name}: dtype {dtype} cannot be written (use float32, "
                                 "bfloat16 or float16)")
            size = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            self._offsets[name] = (offset, offset + size)
            offset += size
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._start = 8 + len(blob)
        self.nbytes = self._start + offset
        self._missing = set(self._layout)
        self._mm: mmap.mmap | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.nbytes)
                self._mm = mmap.mmap(fd, self.nbytes)
            finally:
                os.close(fd)
        except BaseException:
            self.remove()
            raise
        self._mm[:8] = struct.pack("<Q", len(blob))
        self._mm[8:self._start] = blob

    def put(self, name: str, tensor: torch.Tensor) -> None:
        """Copy ``tensor`` (any device) into its place in the file."""
        if self._mm is None:
            raise ValueError(f"{self.path} is closed")
        if name not in self._offsets:
            raise KeyError(f"{name} is not in the checkpoint's layout")
        shape, dtype = self._layout[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, the layout "
                             f"says {shape} {dtype}")
        begin, end = self._offsets[name]
        if end > begin:
            raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=end - begin,
                                   offset=self._start + begin)
            raw.view(dtype).view(shape).copy_(tensor)
            del raw
        self._missing.discard(name)

    def close(self) -> None:
        """Finish the file (every tensor of the layout must have been put)."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._missing:
            missing = sorted(self._missing)
            raise ValueError(f"{len(missing)} tensor(s) never written, e.g. {missing[:3]}")

    def remove(self) -> None:
        """Delete the folder (frees the shared memory once the engine has closed its maps)."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ShmCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def sweep_stale(root: str | Path) -> list[Path]:
    """Remove checkpoints that processes no longer alive left in ``root`` (a SIGKILL in the
    middle of a serve leaves one: RAM on tmpfs until someone deletes it). Returns them."""
    removed = []
    for folder in Path(root).glob("mmmo-weights-*-*"):
        try:
            pid = int(folder.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def load_into_engine(url: str, folder: str | Path, *, timeout: float) -> dict[str, float]:
    """Reload the engine at ``url`` in place from ``folder``; reset its prefix cache.

    Returns:
        ``{"reload": seconds, "reset_prefix_cache": seconds}``.

    Raises:
        EngineHTTPError: the engine refused (its message is quoted) or did not answer.
    """
    started = time.perf_counter()
    post_json(f"{url}/collective_rpc", {"method": "reload_weights",
                                        "kwargs": {"weights_path": str(folder)}},
              timeout=timeout)
    reloaded = time.perf_counter()
    post_json(f"{url}/reset_prefix_cache", {}, timeout=timeout)
    return {"reload": reloaded - started, "reset_prefix_cache": time.perf_counter() - reloaded}
