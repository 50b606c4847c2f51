"""Random-weight model families: tests, homology counter-examples and the >= 1B benchmark.

A family is a base (random Qwen2 weights) plus sources that are the base plus a random "task
vector". Nothing is trained: the weights only have to be homologous (same names and shapes) and
different from each other, which is all merging needs. Tensors are generated on ``device`` (a
GPU builds a >= 1B family in seconds) and written as ordinary HF folders (safetensors + config +
a word-level tokenizer), so mergekit, transformers and mm-mo read them like any other model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "FamilyPaths",
    "build_random_family",
    "copy_with_architectures",
    "family_config",
    "has_architectures",
    "write_tokenizer",
]

_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


@dataclass(frozen=True)
class FamilyPaths:
    """Folders of a built family and its parameter count."""

    base: Path
    sources: tuple[Path, ...]
    params: int


def family_config(*, hidden_size: int, layers: int, intermediate_size: int | None = None,
                  vocab_size: int = 256, heads: int | None = None, kv_heads: int | None = None,
                  tie_word_embeddings: bool = False):
    """A ``Qwen2Config`` for a random family (heads default to ``hidden_size // 64``, >= 1)."""
    from transformers import Qwen2Config

    heads = heads or max(1, hidden_size // 64)
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def write_tokenizer(folder: Path, vocab_size: int, *, swap: tuple[int, int] | None = None) -> None:
    """A word-level tokenizer with ``vocab_size`` ids (``swap`` exchanges two ids' tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(_SPECIALS) + [f"t{i}" for i in range(vocab_size - len(_SPECIALS))]
    if swap is not None:
        i, j = swap
        tokens[i], tokens[j] = tokens[j], tokens[i]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=512,
    ).save_pretrained(str(folder))


def _shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the model ``config`` describes (built on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _save(folder: Path, state: dict[str, torch.Tensor], config, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    save_file({k: v.to("cpu").contiguous() for k, v in state.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(folder, config.vocab_size)


def build_random_family(root: str | Path, *, hidden_size: int = 64, layers: int = 2,
                        intermediate_size: int | None = None, vocab_size: int = 256,
                        n_sources: int = 3, names: tuple[str, ...] | None = None,
                        tie_word_embeddings: bool = False, dtype: str = "float32",
                        delta_scale: float = 0.02, seed: int = 0,
                        device: str = "cpu") -> FamilyPaths:
    """Write a base and ``n_sources`` perturbed copies as HF folders under ``root``.

    Args:
        root: Folder that receives ``base/`` and one folder per source.
        hidden_size: Model width (heads of size 64, or one head below 64).
        layers: Decoder layers.
        intermediate_size: MLP width (default ``4 * hidden_size``).
        vocab_size: Tokenizer and embedding size.
        n_sources: Number of "fine-tunes".
        names: Source folder names (default ``src0, src1, ...``).
        tie_word_embeddings: Share the embedding with the LM head (as the fixture family does).
        dtype: Stored dtype (``float32``, ``bfloat16`` or ``float16``).
        delta_scale: Std of a source's task vector relative to the base weight's std.
        seed: Seed of every random tensor (the same seed gives the same files).
        device: Where tensors are generated (``cuda`` is much faster at >= 1B parameters).

    Returns:
        The folders and the parameter count of one model.
    """
    root = Path(root)
    names = names or tuple(f"src{i}" for i in range(n_sources))
    config = family_config(hidden_size=hidden_size, layers=layers,
                           intermediate_size=intermediate_size, vocab_size=vocab_size,
                           tie_word_embeddings=tie_word_embeddings)
    torch_dtype = getattr(torch, dtype)
    shapes = _shapes(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    base: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            base[name] = torch.ones(shape, device=device, dtype=torch_dtype)
        else:
            std = 0.02 if len(shape) > 1 else 0.01
            base[name] = (torch.randn(shape, generator=gen, device=device) * std).to(torch_dtype)
    _save(root / "base", base, config, torch_dtype)
    sources = []
    for name in names:
        state = {}
        for key, tensor in base.items():
            std = float(tensor.float().std()) if tensor.numel() > 1 else 0.01
            noise = torch.randn(tensor.shape, generator=gen, device=device)
            state[key] = (tensor.float() + noise * (delta_scale * max(std, 1e-3))).to(torch_dtype)
        _save(root / name, state, config, torch_dtype)
        sources.append(root / name)
        del state
    params = sum(t.numel() for t in base.values())
    return FamilyPaths(base=root / "base", sources=tuple(sources), params=params)


def has_architectures(folder: str | Path) -> bool:
    """True when the folder's config.json names its ``architectures`` (mergekit-yaml needs it)."""
    return bool(json.loads((Path(folder) / "config.json").read_text()).get("architectures"))


def copy_with_architectures(folder: str | Path, dest: str | Path) -> Path:
    """Copy a model folder, adding ``architectures`` (from ``model_type``) to its config.json.

    For folders saved without that field, which mergekit-yaml refuses; the weights are the
    same files, so merges of the copy equal merges of the original.
    """
    import shutil

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    dest = Path(dest)
    shutil.copytree(folder, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg["model_type"]]]
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    return dest
