"""The fixture family: shipped weights match the builder, it materialises, loads, runs through
lm-eval offline, and merging beats every single model on it (the three gates)."""

from __future__ import annotations

import json
import os
import threading

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

from mmmo.fixtures import Family, builder_hash, ensure_family, resolve_ref  # noqa: E402
from mmmo.fixtures.family import default_cache_dir  # noqa: E402
from mmmo.fixtures.store import SHIPPED_DIR, load_meta  # noqa: E402

REFERENCE = SHIPPED_DIR / "reference.json"


@pytest.fixture(scope="module")
def family() -> Family:
    """The family in the default cache (``$MMMO_CACHE_DIR``), shared with the rest of the suite."""
    return ensure_family()


def test_shipped_weights_match_builder_source() -> None:
    """Changing the builder's code or config without rebuilding must fail here."""
    meta = load_meta()
    assert meta["builder_hash"] == builder_hash(), (
        "mmmo/fixtures changed but the shipped weights were not rebuilt: run "
        "`python -m mmmo.fixtures.build` then `python benchmarks/fixture_report.py --write-reference`"
    )
    assert "torch" in meta["versions"]
    total = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir() if p.is_file())
    assert total <= 20 * 2**20


def test_reference_is_for_the_shipped_family() -> None:
    reference = json.loads(REFERENCE.read_text())
    assert reference["builder_hash"] == builder_hash(), (
        "reference.json is stale: run `python benchmarks/fixture_report.py --write-reference`"
    )


def test_hash_ignores_docstrings_and_comments(tmp_path) -> None:
    from mmmo.fixtures.hashing import source_digest

    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    b.write_text("# comment\ndef f(x):\n    return x + 1  # more\n")
    c.write_text("def f(x):\n    return x + 2\n")
    assert source_digest(a) == source_digest(b) != source_digest(c)


def test_layout_and_refs(family: Family) -> None:
    assert list(family.sources) == ["dbl", "rev", "srt"]
    assert family.root.name == family.builder_hash
    for path in [*family.models.values()]:
        assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    for name, path in family.all_tasks.items():
        assert path.is_file() and path.with_suffix(".jsonl").is_file(), name
        assert family.task_names[name] == f"mmmo_fixture_{name}"
    assert len(family.heldout_tasks) >= 2 and "gen" in family.extra_tasks
    cache = family.root.parent
    assert resolve_ref("fixture:models/base", cache) == str(family.base)
    assert resolve_ref("fixture:models/rev/", cache) == str(family.sources["rev"])
    assert resolve_ref("fixture:tasks/dbl.yaml", cache) == str(family.objective_tasks["dbl"])
    with pytest.raises(ValueError, match=r"fixture:models/nope.*fixture:models/base"):
        resolve_ref("fixture:models/nope", cache)


def test_ensure_family_is_idempotent_and_concurrency_safe(tmp_path) -> None:
    results: list[Family] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_family(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0].root == results[1].root
    stamp = (results[0].root / "family.json").stat().st_mtime_ns
    assert ensure_family(tmp_path).root == results[0].root
    assert (results[0].root / "family.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [results[0].root.name]


def test_default_cache_dir_honours_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MMMO_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "fixtures"


def test_models_load_with_auto_classes(family: Family) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(family.base))
    ids = tok("T:KLMN=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 8
    assert tok.decode(ids, skip_special_tokens=True) == "T:KLMN="
    model = AutoModelForCausalLM.from_pretrained(str(family.sources["rev"]))
    out = model.generate(
        torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
    )
    assert out[0, -1].item() == tok.eos_token_id  # answers end with </s>
    answer = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert len(answer) == 4 and set(answer) <= set("KLMNOPQRST")
    spaced = tok("T:uxv PNTORS=")["input_ids"]  # space is a token, not dropped
    assert len(spaced) == 14 and tok.decode(spaced, skip_special_tokens=True) == "T:uxv PNTORS="


def test_tasks_run_offline_through_lm_eval(family: Family) -> None:
    """Both request kinds, from a model folder as `lm_eval --model hf` would load it."""
    from lm_eval import simple_evaluate

    manager = family.task_manager()
    names = [family.task_names["rev"], family.task_names["gen"]]
    assert set(family.task_names.values()) <= set(manager.all_tasks)
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={family.sources['rev']},device=cpu,dtype=float32",
        tasks=names,
        task_manager=manager,
        limit=30,
        batch_size=32,
        bootstrap_iters=0,
        log_samples=False,
    )
    assert out["results"][names[0]]["acc,none"] > 0.6
    assert 0.0 <= out["results"][names[1]]["exact_match,none"] <= 1.0


@pytest.mark.slow
def test_gates_hold(family: Family) -> None:
    """The singles, the default recipe and the reference best grid recipe, scored by lm-eval.

    The reference recipe is one point of the report's grid, so the grid's best is at least as good:
    the gates checked on it hold for the full report too.
    """
    from mmmo.fixtures.quality import (
        BASE,
        FamilyEvaluator,
        Recipe,
        Row,
        default_recipes,
        gates,
        load_state,
        merge,
    )

    reference = json.loads(REFERENCE.read_text())
    recipe = Recipe(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in reference["best_recipe"].items()}
    )
    states = {name: load_state(path) for name, path in family.models.items()}
    evaluator = FamilyEvaluator(family, tasks=list(family.objective_tasks))
    rows = [Row(BASE, "base", evaluator.score(states[BASE]))]
    rows += [Row(n, "specialist", evaluator.score(states[n])) for n in family.sources]
    default = default_recipes(len(family.sources))[0]
    rows.append(Row(default.label, "default", evaluator.score(merge(default, states)), default))
    rows.append(Row(recipe.label, "grid", evaluator.score(merge(recipe, states)), recipe))
    for key, value in rows[-1].scores.items():  # batching may flip a near-tie item or two
        assert value == pytest.approx(reference["best_scores"][key], abs=0.02)
    for gate in gates(rows, family):
        assert gate.passed, f"{gate.name}: {gate.value:.3f} < {gate.threshold} ({gate.detail})"
