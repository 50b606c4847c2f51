"""Model families for the merging tests.

``family``: the project's fixture family (``mmmo.fixtures``: tiny Qwen2 base + dbl/rev/srt,
tied embeddings) when its shipped weights are current, else a random tied Qwen2 family of the
same shape built here (``MMMO_MERGING_FAMILY=random|fixture`` forces one). ``random_family``:
always the random one (untied, so it also covers a separate ``lm_head``), and the source of
the deliberately non-homologous models.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmmo.merging.recipe import ModelEntry
from tests.support.synthetic import (
    build_random_family,
    copy_with_architectures,
    has_architectures,
    write_tokenizer,
)


@dataclass(frozen=True)
class Family:
    """A family as the merging tests use it."""

    kind: str
    base: ModelEntry
    sources: tuple[ModelEntry, ...]

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.sources]


def _fixture_family_current() -> bool:
    """True when mmmo.fixtures exists and will not have to retrain (minutes) to materialise."""
    try:
        from mmmo.fixtures.hashing import builder_hash
        from mmmo.fixtures.store import SHIPPED_DIR, load_meta

        return load_meta(SHIPPED_DIR)["builder_hash"] == builder_hash()
    except Exception:  # not there yet, or being rewritten
        return False


def _entries(kind: str, base: str, sources: dict[str, str]) -> Family:
    return Family(kind=kind, base=ModelEntry.from_ref(base, label="base"),
                  sources=tuple(ModelEntry.from_ref(ref, label=label)
                                for label, ref in sources.items()))


@pytest.fixture(scope="session")
def random_family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    root = tmp_path_factory.mktemp("random-family")
    paths = build_random_family(root, hidden_size=64, layers=2, intermediate_size=128,
                                vocab_size=96, names=("dbl", "rev", "srt"), seed=7)
    return _entries("random", str(paths.base),
                    {p.name: str(p) for p in paths.sources})


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    choice = os.environ.get("MMMO_MERGING_FAMILY", "auto")
    if choice == "fixture" or (choice == "auto" and _fixture_family_current()):
        from mmmo.fixtures import ensure_family

        fam = ensure_family()
        folders = {"base": Path(fam.base), **{k: Path(v) for k, v in fam.sources.items()}}
        if all(has_architectures(f) for f in folders.values()):
            return _entries("fixture", "fixture:models/base",
                            {name: f"fixture:models/{name}" for name in sorted(fam.sources)})
        # mergekit reads config.json's `architectures`, which the fixture folders omit: test on
        # copies of the same files with that one field added (see the merging report)
        root = tmp_path_factory.mktemp("fixture-family-with-architectures")
        copies = {name: copy_with_architectures(folder, root / name)
                  for name, folder in folders.items()}
        return _entries("fixture-copy", str(copies.pop("base")),
                        {name: str(path) for name, path in sorted(copies.items())})
    root = tmp_path_factory.mktemp("tied-family")
    paths = build_random_family(root, hidden_size=64, layers=3, intermediate_size=128,
                                vocab_size=66, names=("dbl", "rev", "srt"),
                                tie_word_embeddings=True, seed=11)
    return _entries("random-tied", str(paths.base), {p.name: str(p) for p in paths.sources})


@dataclass(frozen=True)
class Mismatched:
    """Non-homologous variants of random_family's base, with what each should be caught on."""

    shape: Path
    missing: Path
    config: Path
    vocab: Path


@pytest.fixture(scope="session")
def mismatched(random_family: Family, tmp_path_factory: pytest.TempPathFactory) -> Mismatched:
    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("mismatched")
    base = Path(random_family.base.ref)
    state = load_file(str(base / "model.safetensors"))

    def variant(name: str, tensors: dict[str, torch.Tensor]) -> Path:
        folder = root / name
        shutil.copytree(base, folder)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    shape = dict(state)
    shape["model.layers.1.mlp.up_proj.weight"] = torch.zeros(96, 64)
    missing = {k: v for k, v in state.items() if k != "model.layers.0.self_attn.v_proj.bias"}
    config = variant("config", dict(state))
    cfg = json.loads((config / "config.json").read_text())
    cfg["num_key_value_heads"] = 2 if cfg["num_key_value_heads"] != 2 else 1
    (config / "config.json").write_text(json.dumps(cfg))
    vocab = variant("vocab", dict(state))
    write_tokenizer(vocab, 96, swap=(10, 11))
    return Mismatched(shape=variant("shape", shape), missing=variant("missing", missing),
                      config=config, vocab=vocab)


# ---------------------------------------------------------------------- mergekit references

#: Recipe values per method: each method's own parameters, two gradients, int8 masks once.
METHOD_VALUES: dict[str, dict] = {
    "linear": {"weight": [0.5, 0.3, 0.2]},
    "task_arithmetic": {"weight": [0.5, 0.3, 0.2]},
    "ties": {"weight": [[0.2, 0.6], 0.3, 0.2], "density": [0.5, 0.7, 0.4]},
    "dare_ties": {"weight": [0.5, 0.3, 0.2], "density": [0.5, 0.7, 0.4],
                  "settings": {"int8_mask": True, "normalize": False}},
    "dare_linear": {"weight": [0.5, 0.3, 0.2], "density": [0.5, 0.7, 0.4]},
    "breadcrumbs": {"weight": [0.5, 0.3, 0.2], "density": [0.8, 0.9, 0.7],
                    "gamma": [0.02, 0.01, 0.03]},
    "breadcrumbs_ties": {"weight": [0.5, 0.3, 0.2], "density": [0.8, 0.9, 0.7],
                         "gamma": [0.02, 0.01, 0.03]},
    "della": {"weight": [0.5, 0.3, 0.2], "density": [[0.4, 0.6], 0.7, 0.5],
              "epsilon": [0.1, 0.15, 0.2]},
    "della_linear": {"weight": [0.5, 0.3, 0.2], "density": [0.5, 0.7, 0.4],
                     "epsilon": [0.1, 0.15, 0.2]},
}
SEED = 1234


def _recipe_for(method: str, fam: Family, *, seed: int = SEED):
    """The test recipe of ``method`` over ``fam`` (values from METHOD_VALUES)."""
    from mmmo.merging.recipe import Recipe

    values = dict(METHOD_VALUES[method])
    settings = values.pop("settings", {})
    per_source = {label: {k: v[i] for k, v in values.items()}
                  for i, label in enumerate(fam.labels)}
    return Recipe.build(method=method, base=fam.base, sources=fam.sources,
                        per_source=per_source, settings=settings, random_seed=seed)


_DRIVER = """
import json, sys
import torch
from mergekit.scripts.run_yaml import main
torch.set_num_threads(1)  # what `--num-threads 1` does (it may be given once per process only)
for config, out, seed in json.loads(sys.argv[1]):
    main([config, out, "--random-seed", str(seed), "--device", "cpu", "--quiet",
          "--no-write-model-card", "--no-copy-tokenizer"], standalone_mode=False)
"""


@dataclass
class MergekitRuns:
    """mergekit-yaml outputs, produced by one background process started once per session."""

    outputs: dict[str, Path]
    yamls: dict[str, Path]
    proc: object

    def wait(self, method: str) -> dict:
        """The output tensors of ``method`` (blocks until the process has finished)."""
        from safetensors.torch import load_file

        proc = self.proc
        if proc.returncode is None:
            _out, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"mergekit-yaml failed: {err[-3000:]}")
        tensors: dict = {}
        for file in sorted(self.outputs[method].glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        return tensors


@pytest.fixture(scope="session")
def mergekit_runs(family: Family, tmp_path_factory: pytest.TempPathFactory):
    """Every method through ``mergekit-yaml`` on the same YAML and seed, in the background.

    One fresh interpreter calls mergekit-yaml's click entry point (``mergekit.scripts.run_yaml
    .main``, what the ``mergekit-yaml`` executable runs) once per method, with the CLI's own
    arguments: the CLI's code path, the ~10 s import paid once instead of nine times.
    ``dare_ties`` goes first, in a pristine process, exactly as the executable would run it;
    the export test compares the exported YAML and weights with that run.
    """
    import subprocess
    import sys

    from mmmo.spec import TASK_ARITHMETIC_METHODS

    root = tmp_path_factory.mktemp("mergekit-yaml")
    outputs, yamls, jobs = {}, {}, []
    methods = sorted(TASK_ARITHMETIC_METHODS, key=lambda m: m != "dare_ties")
    for method in methods:
        recipe = _recipe_for(method, family)
        yamls[method] = root / f"{method}.yaml"
        yamls[method].write_text(recipe.to_yaml())
        outputs[method] = root / method
        jobs.append([str(yamls[method]), str(outputs[method]), recipe.random_seed])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(jobs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield MergekitRuns(outputs=outputs, yamls=yamls, proc=proc)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def materializer(family: Family):
    """One resident Materializer over the family (CPU, float32), shared by the tests."""
    from mmmo.merging.materialize import Materializer

    return Materializer(family.base, family.sources, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def recipe_for():
    """``recipe_for(method, family, seed=...)``: the test recipe of a method."""
    return _recipe_for


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread in these tests (restored after each), as the mergekit-yaml runs use.

    CPU reductions (e.g. DARE's L1 rescale) sum in an order that depends on the thread count,
    so bit-identity with mergekit-yaml holds for equal thread counts; one thread is also far
    faster than two contended ones on a shared 2-core machine.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_LATE = ("test_equivalence.py", "test_export.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Run this folder's mergekit-yaml comparisons after its other tests.

    The mergekit-yaml process starts with the folder's first test (see ``_start_mergekit``)
    and runs in the background meanwhile; only the relative order inside tests/merging changes.
    """
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if Path(str(item.path)).parent == here]
    mine = [items[i] for i in slots]
    ordered = ([it for it in mine if Path(str(it.path)).name not in _LATE]
               + [it for it in mine if Path(str(it.path)).name in _LATE])
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


@pytest.fixture(scope="session", autouse=True)
def _start_mergekit(request) -> None:
    """Start mergekit-yaml in the background at once when a selected test will need it."""
    if any("mergekit_runs" in getattr(item, "fixturenames", ())
           for item in request.session.items):
        request.getfixturevalue("mergekit_runs")
