"""The layered fixture family: shipped weights match its builder, each specialist's knowledge sits
in its own band of layers, refs resolve and pass the spec validators, a small slice runs a
layer-wise trial in seconds, the builder is deterministic, and (slow) the gates hold."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from mmmo.fixtures import Family, builder_hash, ensure_family, resolve_ref  # noqa: E402
from mmmo.fixtures.layered import SHIPPED_DIR, ensure_layered_family, layered_hash  # noqa: E402
from mmmo.fixtures.layered.config import DEFAULT_CONFIG  # noqa: E402
from mmmo.fixtures.store import load_meta  # noqa: E402

REFERENCE = SHIPPED_DIR / "reference.json"
SLICE = ("rev", "srt")  # the test slice: two specialists, a few documents


@pytest.fixture(scope="module")
def family() -> Family:
    """The layered family in the default cache (``$MMMO_CACHE_DIR``)."""
    return ensure_layered_family()


def test_shipped_weights_match_builder_source() -> None:
    """Changing the layered builder's code or config without rebuilding must fail here."""
    meta = load_meta(SHIPPED_DIR)
    assert meta["builder_hash"] == layered_hash(), (
        "mmmo/fixtures/layered changed but the shipped weights were not rebuilt: run "
        "`python -m mmmo.fixtures.layered.build` then "
        "`python benchmarks/layered_report.py --write-reference`"
    )
    total = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir() if p.is_file())
    assert total <= 12 * 2**20
    assert layered_hash() != builder_hash()


def test_reference_is_for_the_shipped_family() -> None:
    reference = json.loads(REFERENCE.read_text())
    assert reference["builder_hash"] == layered_hash(), (
        "reference.json is stale: run `python benchmarks/layered_report.py --write-reference`"
    )


def test_layout_and_refs(family: Family) -> None:
    assert list(family.sources) == ["dbl", "rev", "rot", "srt", "swp"]
    assert family.root.name == f"layered-{family.builder_hash}"
    assert set(family.heldout_tasks) == {"mix", "gen"} and set(family.extra_tasks) == {"long"}
    for name, path in family.all_tasks.items():
        rows = path.with_suffix(".jsonl").read_text().splitlines()
        assert len(rows) == DEFAULT_CONFIG.items_per_task, name
        assert family.task_names[name] == f"mmmo_layered_{name}"
    cache = family.root.parent
    assert resolve_ref("fixture:layered/models/base", cache) == str(family.base)
    assert resolve_ref("fixture:layered/models/rot/", cache) == str(family.sources["rot"])
    assert resolve_ref("fixture:layered/tasks/swp.yaml", cache) == str(
        family.objective_tasks["swp"])
    first = ensure_family(cache)  # the first family's refs are unchanged beside it
    assert resolve_ref("fixture:models/rev", cache) == str(first.sources["rev"])
    assert first.root != family.root and first.root.parent == family.root.parent
    with pytest.raises(ValueError, match=r"fixture:layered/models/dbl.*"):
        resolve_ref("fixture:layered/models/nope", cache)


def test_spec_validators_accept_layered_refs() -> None:
    from mmmo.errors import SpecError
    from mmmo.spec import parse_spec

    data = {
        "name": "layered",
        "base": {"path": "fixture:layered/models/base"},
        "sources": [{"path": f"fixture:layered/models/{s}"} for s in SLICE],
        "objectives": {"tasks": [{"task": f"fixture:layered/tasks/{s}.yaml"} for s in SLICE]},
        "merge": {"method": "dare_ties", "layer_groups": 3},
    }
    spec = parse_spec(data)
    assert [s.label for s in spec.sources] == list(SLICE)
    bad = json.loads(json.dumps(data))
    bad["sources"][0]["path"] = "fixture:layered/rev"
    with pytest.raises(SpecError, match="fixture models live under"):
        parse_spec(bad)
    bad = json.loads(json.dumps(data))
    bad["objectives"]["tasks"][0]["task"] = "fixture:layered/tasks/rev.json"
    with pytest.raises(SpecError, match="fixture tasks are YAML files"):
        parse_spec(bad)


def test_each_specialist_lives_in_its_band(family: Family) -> None:
    """A specialist differs from the base exactly on the layers its adapters cover."""
    from safetensors.torch import load_file

    from mmmo.fixtures.layered.train import layer_of

    base = load_file(str(family.base / "model.safetensors"))
    bands = {name: set(spec.layers) for name, spec in DEFAULT_CONFIG.specialists}
    assert len({frozenset(b) for b in bands.values()}) == len(bands)  # all bands differ
    for name, folder in family.sources.items():
        state = load_file(str(folder / "model.safetensors"))
        changed = {k for k, v in state.items() if not v.equal(base[k])}
        assert changed, name
        assert {layer_of(k) for k in changed} == bands[name], name


def test_specialists_task_vectors_differ_in_size(family: Family) -> None:
    """Built-in interference: the two specialists trained at 4x the learning rate (dbl, srt)
    have the largest task vectors (19.3 and 29.8 vs 12.4-17.4 as built), so equal weights let
    them drown the others."""
    import torch
    from safetensors.torch import load_file

    base = load_file(str(family.base / "model.safetensors"))
    norms = {}
    for name, folder in family.sources.items():
        state = load_file(str(folder / "model.safetensors"))
        norms[name] = float(torch.sqrt(sum(((state[k] - base[k]) ** 2).sum() for k in base)))
    big = {name for name, spec in DEFAULT_CONFIG.specialists if spec.train.lr >= 4e-3}
    assert big == {"dbl", "srt"}
    small = set(norms) - big
    assert min(norms[n] for n in big) > max(norms[n] for n in small), norms


def test_a_layerwise_trial_on_a_slice_runs_through_the_core(family: Family) -> None:
    """The test slice: 2 specialists, 8 documents, one layer-wise dare_ties trial via lm-eval."""
    import numpy as np

    from mmmo.evaluation import evaluate_benchmark
    from mmmo.merging import Materializer
    from mmmo.space import SearchSpace
    from mmmo.spec import parse_spec

    spec = parse_spec({
        "name": "layered-slice",
        "base": {"path": "fixture:layered/models/base"},
        "sources": [{"path": f"fixture:layered/models/{s}"} for s in SLICE],
        "objectives": {"tasks": [{"task": f"fixture:layered/tasks/{s}.yaml", "limit": 8}
                                 for s in SLICE]},
        "heldout": [{"task": "fixture:layered/tasks/gen.yaml", "metric": "exact_match",
                     "limit": 8}],
        "merge": {"method": "dare_ties", "normalize": False, "layer_groups": 3},
        "compute": {"device": "cpu", "dtype": "float32"},
    })
    space = SearchSpace.from_spec(spec)
    assert space.dim == len(SLICE) * 2 * 3
    recipe = space.decode(np.full(space.dim, 0.9))
    merged = Materializer.from_spec(spec, device="cpu").materialize(recipe)
    for task in [*spec.objectives.tasks, *spec.heldout]:
        result = evaluate_benchmark(merged.model, merged.tokenizer, task, batch_size=64,
                                    bootstrap_iters=0)
        assert result.status == "ok" and result.n_docs == 8, result
        assert 0.0 <= result.score <= 1.0


def test_builder_is_deterministic(tmp_path) -> None:
    """Two builds of a shortened configuration write byte-identical shipped files."""
    from mmmo.fixtures.layered.build import build

    short = dataclasses.replace(
        DEFAULT_CONFIG,
        base=dataclasses.replace(DEFAULT_CONFIG.base, steps=3, warmup_steps=1),
        specialists=tuple(
            (n, dataclasses.replace(s, train=dataclasses.replace(s.train, steps=2,
                                                                 warmup_steps=1)))
            for n, s in DEFAULT_CONFIG.specialists[:2]
        ),
        items_per_task=20,
    )
    for out in ("a", "b"):
        build(short, tmp_path / out)
    for name in ("base.safetensors", "adapters.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MMMO_FULL_REBUILD"),
                    reason="10 CPU-minutes: set MMMO_FULL_REBUILD=1 (the suite checks a "
                    "shortened build's determinism instead)")
def test_rebuild_is_bit_identical(tmp_path) -> None:
    """The full builder reproduces the shipped weights byte for byte (~10 CPU minutes)."""
    from mmmo.fixtures.layered.build import build

    build(DEFAULT_CONFIG, tmp_path)
    for name in ("base.safetensors", "adapters.safetensors"):
        assert (tmp_path / name).read_bytes() == (SHIPPED_DIR / name).read_bytes(), name


@pytest.mark.slow
def test_gates_hold(family: Family) -> None:
    """The singles, the best untuned recipe and the report's best pick, on unseen documents.

    The pick is the recipe ``benchmarks/layered_report.py --write-reference`` recorded; the
    gates are re-checked on fresh lm-eval scores of it (CPU minutes).
    """
    from mmmo.fixtures.layered.gates import gates, make_spec, score
    from mmmo.merging import Materializer
    from mmmo.space import SearchSpace

    reference = json.loads(REFERENCE.read_text())
    spec = make_spec("dare_ties", search_limit=reference["search_limit"])
    space = SearchSpace.from_spec(spec)
    materializer = Materializer.from_spec(spec, device="cpu")
    tasks = list(spec.objectives.tasks)

    def scores(loaded) -> dict[str, float]:
        return {t.label: score(loaded.model, loaded.tokenizer, t, "confirm") for t in tasks}

    rows = [("base", "base", scores(materializer.load_model("base")))]
    rows += [(s, "single", scores(materializer.load_model(s))) for s in family.sources]
    untuned = space.fixed_recipe(method=reference["best_untuned"])
    rows.append((reference["best_untuned"], "untuned", scores(materializer.materialize(untuned))))
    pick = space.recipe(reference["best_pick"]["recipe"])
    rows.append(("pick", "search", scores(materializer.materialize(pick))))
    recorded = next(r for r in reference["rows"] if r["label"] == reference["best_pick"]["label"])
    for task, value in rows[-1][2].items():  # batching may flip a near-tie item or two
        assert value == pytest.approx(recorded["scores"][task], abs=0.02), task
    for gate in gates(rows, len(family.heldout_tasks)):
        assert gate.passed, gate.line()
