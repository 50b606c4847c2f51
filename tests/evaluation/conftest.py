"""Fixtures of the evaluation tests: a tiny offline model family and tiny lm-eval tasks.

The stand-in family (built in seconds, no download): a random 2-layer Qwen2 with a character
tokenizer as the base, and two "sources" that are the base plus seeded noise. Tasks are local
jsonl + YAML: ``mc`` (multiple choice, acc), ``gen`` (generate_until, exact_match), ``ppl``
(loglikelihood, perplexity: a continuous score, for staleness and NaN checks) and ``mc2`` and
``grp`` (a group of ``mc`` and ``mc2``).

:func:`fixture_family` gives the project's real fixture family (``mmmo.fixtures``) when its
shipped weights make it cheap to materialise, else None.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 :=>?|.,-+\n"
N_DOCS = 48


@dataclass(frozen=True)
class Family:
    """The stand-in family: HF folders and task YAMLs."""

    root: Path
    base: Path
    sources: dict[str, Path]
    tasks: dict[str, Path]


def build_tokenizer():
    """A character tokenizer (``<s>`` prepended), built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(ALPHABET))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=64, padding_side="right",
        clean_up_tokenization_spaces=False)


def build_model(seed: int):
    """A random tiny Qwen2 causal LM (about 40k parameters)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=4 + len(ALPHABET), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False)
    return Qwen2ForCausalLM(config).eval()


def perturbed(model, seed: int, scale: float = 0.5):
    """A copy of ``model`` with seeded noise added to every weight (a 'fine-tuned' source)."""
    import copy

    import torch

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().clamp_min(1e-3))
    return out


def task_yaml(name: str, data: Path, kind: str) -> str:
    """YAML text of one tiny task."""
    head = (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {json.dumps(str(data))}\ntest_split: test\n")
    if kind == "mc":
        body = ("output_type: multiple_choice\ndoc_to_text: prompt\ndoc_to_choice: choices\n"
                "doc_to_target: label\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: acc\n"
                "    aggregation: mean\n    higher_is_better: true\n")
    elif kind == "gen":
        body = ("output_type: generate_until\ndoc_to_text: prompt\ndoc_to_target: answer\n"
                "target_delimiter: \"\"\ngeneration_kwargs:\n  until: [\"\\n\", \"=\"]\n"
                "  do_sample: false\n  max_gen_toks: 6\nmetric_list:\n  - metric: exact_match\n"
                "    aggregation: mean\n    higher_is_better: true\n")
    else:
        body = ("output_type: loglikelihood\ndoc_to_text: prompt\ndoc_to_target: answer\n"
                "target_delimiter: \"\"\nmetric_list:\n  - metric: perplexity\n"
                "    aggregation: perplexity\n    higher_is_better: false\n")
    return head + body + "metadata:\n  version: 1.0\n"


def write_rows(path: Path, seed: int) -> None:
    """``N_DOCS`` reverse-a-word items with four same-length choices."""
    rng = random.Random(seed)
    rows = []
    for _ in range(N_DOCS):
        word = "".join(rng.choice("ABCDEFGHKLMN") for _ in range(rng.randint(3, 5)))
        answer = word[::-1]
        choices = [answer, word, word[1:] + word[0], word[0] * len(word)]
        rng.shuffle(choices)
        rows.append({"prompt": f"T:{word}=", "answer": answer, "choices": choices,
                     "label": choices.index(word[::-1])})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tasks(folder: Path) -> dict[str, Path]:
    """The tiny tasks (and a group of two of them) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / "items.jsonl", seed=0)
    write_rows(folder / "items2.jsonl", seed=1)
    specs = {"mc": ("items.jsonl", "mc"), "gen": ("items.jsonl", "gen"),
             "ppl": ("items.jsonl", "ppl"), "mc2": ("items2.jsonl", "mc")}
    paths = {}
    for short, (data, kind) in specs.items():
        path = folder / f"{short}.yaml"
        path.write_text(task_yaml(f"tiny_{short}", folder / data, kind))
        paths[short] = path
    grp = folder / "grp.yaml"
    grp.write_text("group: tiny_grp\ntask:\n  - tiny_mc\n  - tiny_mc2\naggregate_metric_list:\n"
                   "  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 1.0\n")
    paths["grp"] = grp
    return paths


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread while these tests run (restored after each).

    The models here are tiny: a second thread buys nothing, and on a shared 2-core machine
    OpenMP threads spinning on preempted cores made forwards ~10x slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """The stand-in family on disk: base, two sources, tasks."""
    root = tmp_path_factory.mktemp("family")
    tok = build_tokenizer()
    base = build_model(0)
    folders = {}
    for name, model in {"base": base, "src1": perturbed(base, 1), "src2": perturbed(base, 2)}.items():
        folder = root / "models" / name
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[name] = folder
    tasks = write_tasks(root / "tasks")
    return Family(root=root, base=folders["base"],
                  sources={"src1": folders["src1"], "src2": folders["src2"]}, tasks=tasks)


def load(folder: Path):
    """(model, tokenizer) from an HF folder, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def base_pair(family: Family):
    """The base model and tokenizer, loaded once."""
    return load(family.base)


@pytest.fixture(scope="session")
def helpers():
    """This module (its builders), for tests: importlib mode cannot import conftest by name."""
    return sys.modules[__name__]


@pytest.fixture
def registry():
    """A fresh task registry (no state shared between tests)."""
    from mmmo.evaluation import TaskRegistry

    return TaskRegistry()


def fixture_family():
    """The project's fixture family when it is cheap to materialise (shipped weights), else None."""
    try:
        from mmmo.fixtures import builder_hash, ensure_family
        from mmmo.fixtures.config import DEFAULT_CONFIG
        from mmmo.fixtures.store import SHIPPED_DIR, load_meta

        if load_meta(SHIPPED_DIR)["builder_hash"] != builder_hash(DEFAULT_CONFIG):
            return None
        return ensure_family()
    except Exception as exc:  # not landed yet, or its weights are not shipped
        print(f"fixture family unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
