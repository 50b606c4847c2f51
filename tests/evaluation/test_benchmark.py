"""One benchmark on a live model: the result record, fixed subsamples, no stale state."""

from __future__ import annotations

import json

import pytest
import torch

from mmmo.errors import SpecError
from mmmo.evaluation import BenchmarkResult, evaluate_benchmark, get_lm, select_docs
from mmmo.spec import TaskSpec


def test_result_record(family, base_pair, registry):
    model, tok = base_pair
    spec = TaskSpec(task=str(family.tasks["mc"]), limit=12, sample_seed=5)
    result = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
    assert isinstance(result, BenchmarkResult), result
    assert (result.task, result.metric, result.filter) == ("mc", "acc", "none")
    assert 0.0 <= result.score <= 1.0 and result.stderr is not None
    assert (result.n_docs, result.n_total) == (12, 48)
    assert result.doc_indices == {"tiny_mc": select_docs(48, 12, 5)}
    assert result.raw["n-samples"]["tiny_mc"] == {"original": 48, "effective": 12}
    assert result.raw["results"]["tiny_mc"]["acc,none"] == result.score
    assert 0.0 < result.forward_seconds <= result.request_seconds <= result.seconds
    again = BenchmarkResult.model_validate(json.loads(json.dumps(result.model_dump(mode="json"))))
    assert again == result


def test_every_trial_sees_the_same_documents(family, base_pair, registry):
    model, tok = base_pair
    spec = TaskSpec(task=str(family.tasks["gen"]), metric="exact_match", limit=0.125)
    first = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
    second = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
    assert isinstance(first, BenchmarkResult) and isinstance(second, BenchmarkResult)
    assert first.n_docs == 6 and first.docs_hash == second.docs_hash
    assert first.doc_indices == second.doc_indices
    assert first.score == second.score and first.raw["results"] == second.raw["results"]


def test_group_scores_aggregate_over_leaves(family, base_pair, registry):
    model, tok = base_pair
    spec = TaskSpec(task=str(family.tasks["grp"]), limit=6)
    result = evaluate_benchmark(model, tok, spec, batch_size=8, registry=registry)
    assert isinstance(result, BenchmarkResult), result
    assert result.n_docs == 12 and set(result.doc_indices) == {"tiny_mc", "tiny_mc2"}
    leaves = [result.raw["results"][t]["acc,none"] for t in ("tiny_mc", "tiny_mc2")]
    assert result.score == pytest.approx(sum(leaves) / 2)


def test_in_place_weight_changes_are_not_stale(family, helpers, registry):
    """One HFLM, re-used after the resident model's weights change, scores the new weights."""
    resident, tok = helpers.load(family.base)
    other, _ = helpers.load(family.sources["src1"])
    spec = TaskSpec(task=str(family.tasks["ppl"]), metric="perplexity", limit=8)
    lm = get_lm(resident, tok, batch_size=8)
    before = evaluate_benchmark(resident, tok, spec, batch_size=8, registry=registry)
    with torch.no_grad():
        for mine, theirs in zip(resident.parameters(), other.parameters(), strict=True):
            mine.copy_(theirs)
    after = evaluate_benchmark(resident, tok, spec, batch_size=8, registry=registry)
    fresh = evaluate_benchmark(other, tok, spec, batch_size=8, registry=registry)
    assert get_lm(resident, tok, batch_size=8) is lm  # the wrapper was re-used
    assert after.score != before.score
    assert after.score == pytest.approx(fresh.score, rel=1e-9)


def test_caller_mistakes_raise(family, base_pair, registry, tmp_path):
    model, tok = base_pair
    spec = TaskSpec(task=str(family.tasks["mc"]), limit=2)
    with pytest.raises(ValueError, match="the model is on cpu, not on cuda"):
        evaluate_benchmark(model, tok, spec, device="cuda", registry=registry)
    missing = TaskSpec.model_construct(**{**spec.model_dump(), "task": str(tmp_path / "x.yaml")})
    with pytest.raises(SpecError, match="^task: no task YAML"):
        evaluate_benchmark(model, tok, missing, registry=registry)
