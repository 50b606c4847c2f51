"""The search flow in-process against the session's Prefect server: end to end (the default
strategy, mmmo), reuse, failures, S3."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest

import mmmo.evaluation
from flows.search import merge_search, resume_search
from mmmo import hooks
from mmmo.engine.slots import close_session
from mmmo.merging import Materializer
from mmmo.merging.export import read_export
from mmmo.study import StudyStore

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Counts real evaluations and materialisations (the functions still run)."""
    counter: collections.Counter[str] = collections.Counter()
    real_eval, real_mat = mmmo.evaluation.evaluate_benchmark, Materializer.materialize

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        counter["evaluate"] += 1
        return real_eval(*args, **kwargs)

    def materialize(self: Materializer, recipe: Any) -> Any:
        counter["materialize"] += 1
        return real_mat(self, recipe)

    monkeypatch.setattr(mmmo.evaluation, "evaluate_benchmark", evaluate)
    monkeypatch.setattr(Materializer, "materialize", materialize)
    return counter


def _summary(store: StudyStore) -> list[tuple[int, str, dict[str, Any]]]:
    return [(t.number, t.recipe_id, t.objectives) for t in store.trials()]


@pytest.mark.slow
def test_search_end_to_end_then_every_trial_is_reused(tmp_path: Path, make_spec: Any,
                                                      calls: collections.Counter[str]) -> None:
    storage = str(tmp_path / "studies")
    spec = make_spec(tmp_path, storage=storage, strategy="mmmo")
    result = merge_search(spec=str(spec), study="e2e")

    store = StudyStore(storage, "e2e")
    trials = store.trials()
    assert result["complete"] and len(trials) == 5
    assert all(t.status == "complete" for t in trials), [t.error for t in trials]
    proposals = store.proposals()
    assert [p.iteration for p in proposals] == [0, 1]
    assert [p.strategy for p in proposals] == ["mmmo", "mmmo"]
    assert [t.iteration for t in trials] == [0, 0, 0, 1, 1]
    assert [t.order for t in trials] == [0, 1, 2, 3, 4]
    for t in trials:  # objectives, their stderrs and the sparsity objective all recorded
        assert set(t.objectives) == {"dbl", "rev", "srt", "sparsity"}
        assert t.values[-1] == -t.objectives["sparsity"] < 0
        assert set(t.benchmarks) == {"dbl", "rev", "srt"}
        assert t.benchmarks["dbl"]["n_docs"] == 16 and t.stderrs[0] is not None
    # 5 trials x 3 objectives + final table: 4 single models, the pick and its candidate of
    # the front (confirm.top_k 1) x 4 tasks: the objectives on documents no trial saw (so none
    # is a cached benchmark of a trial), the held-out task
    final = store.read_json("final.json")
    candidates = [c["number"] for c in final["pick"]["candidates"]]
    assert len(candidates) == 1
    assert calls["evaluate"] == 15 + (4 + 2) * 4
    assert final["pick"]["number"] in {t.number for t in trials}
    assert set(final["table"]["rows"]) == {"base", "dbl", "rev", "srt",
                                           f"pick (trial {final['pick']['number']})",
                                           f"trial {candidates[0]} (front)"}
    assert final["table"]["confirmed"] and final["table"]["documents"]["dbl"] == 16
    info = read_export(result["export"])
    assert info is not None and info.recipe_id == final["pick"]["recipe_id"]
    assert {"model.safetensors", "mergekit.yaml", "config.json"} <= set(info.files)
    for name in ("report.html", "report.md", "pareto.png", "hypervolume.png"):
        assert store.exists(f"reports/{name}")

    # the same command again: nothing is merged or evaluated again
    calls.clear()
    again = merge_search(spec=str(spec), study="e2e")
    assert again["complete"] and again["pick"]["number"] == result["pick"]["number"]
    assert calls["evaluate"] == 0 and calls["materialize"] == 0
    assert store.trials() == trials

    # a new study with the same spec and storage: every merge and benchmark is a cache hit
    calls.clear()
    other = merge_search(spec=str(spec), study="e2e-twin")
    assert other["complete"]
    assert calls["evaluate"] == 0
    assert calls["materialize"] <= 1  # only to export the pick into the new study
    assert _summary(StudyStore(storage, "e2e-twin")) == _summary(store)


def test_a_failed_benchmark_is_recorded_and_the_search_goes_on(
        tmp_path: Path, make_spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmmo.evaluation import EvalFailure

    real = mmmo.evaluation.evaluate_benchmark
    storage = str(tmp_path / "studies")
    spec = make_spec(tmp_path, storage=storage)
    seen: dict[str, Any] = {}
    attempts: collections.Counter[tuple[str, str]] = collections.Counter()

    def injected(model: Any, tokenizer: Any, task: Any, **kwargs: Any) -> Any:
        first = StudyStore(storage, "faults").proposals()[0].trials
        seen["bad"], seen["flaky"] = first[0].recipe_id, first[1].recipe_id
        rid = hooks._CURRENT.get()[0]  # the recipe the engine is evaluating
        if kwargs["docs"].start is not None:  # the final table's confirmation: not injected
            return real(model, tokenizer, task, **kwargs)
        attempts[rid, task.label] += 1
        if rid == seen["bad"] and task.label == "rev":
            return EvalFailure(kind="exception", task="rev",
                               message="RuntimeError: injected: rev always fails")
        if rid == seen["flaky"] and task.label == "dbl" and attempts[rid, task.label] == 1:
            return EvalFailure(kind="exception", task="dbl",
                               message="RuntimeError: injected: dbl fails once")
        return real(model, tokenizer, task, **kwargs)

    monkeypatch.setattr(mmmo.evaluation, "evaluate_benchmark", injected)
    result = merge_search(spec=str(spec), study="faults")
    assert result["complete"]

    trials = {t.recipe_id: t for t in StudyStore(storage, "faults").trials()}
    bad, flaky = trials[seen["bad"]], trials[seen["flaky"]]
    assert attempts[seen["bad"], "rev"] == 2  # the first try + 1 retry (evaluation.retries)
    assert bad.status == "failed"
    assert bad.error["kind"] == "exception"
    assert "injected: rev always fails" in bad.error["message"]
    assert bad.objectives["rev"] is None and bad.objectives["dbl"] is not None
    assert bad.values[1] is None  # the optimizer is told a failed trial
    assert flaky.status == "complete" and attempts[seen["flaky"], "dbl"] == 2
    others = [t for t in trials.values() if t.recipe_id != seen["bad"]]
    assert len(trials) == 5 and all(t.status == "complete" for t in others)
    assert result["pick"]["recipe_id"] != seen["bad"]


@pytest.mark.slow
def test_search_on_s3_resumes_from_a_fresh_working_directory(
        tmp_path: Path, make_spec: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    storage = f"{s3_bucket}/studies"
    spec = make_spec(tmp_path, storage=storage, name="on-s3")
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    partial = merge_search(spec=str(spec), study="s3", max_iterations=1)
    assert partial["complete"] is False
    store = StudyStore(storage, "s3")
    before = {t.number: t.finished_at for t in store.trials()}
    assert sorted(before) == [0, 1, 2]

    # a fresh working directory and no in-process state: the store on S3 is all there is
    close_session(store.url)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    done = resume_search(study="s3", storage=storage)
    assert done["complete"]
    after = {t.number: t.finished_at for t in store.trials()}
    assert sorted(after) == [0, 1, 2, 3, 4]
    assert all(after[n] == before[n] for n in before)  # finished trials were not redone
    assert read_export(done["export"]) is not None and done["export"].startswith("s3://")
    fs = s3fs.S3FileSystem()
    assert fs.ls(f"{storage}/.outcomes")  # the result store is on S3 too
    assert not list(fresh.iterdir())  # nothing written to the working directory
