"""Task resolution, validation, subsampling and benchmark keys."""

from __future__ import annotations

import pytest

from mmmo.errors import SpecError
from mmmo.evaluation import (
    TaskRegistry,
    benchmark_key,
    select_docs,
    task_fingerprint,
    validate_tasks,
)
from mmmo.evaluation.docs import sample_size
from mmmo.spec import ObjectiveSpec, TaskSpec


def test_select_docs_is_seeded_sorted_and_nested():
    first = select_docs(300, 20, 7)
    assert first == select_docs(300, 20, 7)
    assert first == sorted(first) and len(set(first)) == 20
    assert first != list(range(20))  # not simply the first documents
    assert select_docs(300, 20, 8) != first
    assert set(first) <= set(select_docs(300, 50, 7))  # a larger limit keeps the smaller one
    assert select_docs(300, None, 7) is None
    assert select_docs(300, 300, 7) is None and select_docs(300, 1.0, 7) is None
    assert len(select_docs(300, 0.1, 7)) == 30
    assert sample_size(0.001, 300) == 1  # a fraction selects at least one document


def test_resolve_yaml_paths_and_groups(family, registry):
    mc = registry.resolve(str(family.tasks["mc"]))
    assert (mc.name, mc.group, mc.builtin) == ("tiny_mc", False, False)
    grp = registry.resolve(str(family.tasks["grp"]))
    assert grp.group and grp.load_spec == "tiny_grp"
    with registry.checkout(TaskSpec(task=str(family.tasks["grp"]))) as loaded:
        assert set(loaded.leaves) == {"tiny_mc", "tiny_mc2"}
        assert loaded.n_docs == {"tiny_mc": 48, "tiny_mc2": 48}


def test_bare_names_from_include_paths(family):
    registry = TaskRegistry(include_paths=[family.tasks["mc"].parent])
    assert registry.resolve("tiny_gen").name == "tiny_gen"
    assert registry.manager().task_index  # only local folders were indexed
    assert not registry._defaults


def test_pool_reuses_task_objects(family, registry):
    spec = TaskSpec(task=str(family.tasks["mc"]))
    with registry.checkout(spec) as first, registry.checkout(spec) as concurrent:
        assert concurrent is not first  # one object per evaluation at a time
    with registry.checkout(spec) as again:
        assert again in (first, concurrent)
    other = TaskSpec(task=str(family.tasks["mc"]), num_fewshot=2)
    with registry.checkout(other) as shot:
        assert shot not in (first, concurrent)
        assert shot.leaves["tiny_mc"].get_config("num_fewshot") == 2


def test_validate_catches_bad_paths_metrics_and_filters(family, registry, tmp_path):
    good = ObjectiveSpec(task=str(family.tasks["mc"]), limit=5)
    validate_tasks([good], field="objectives.tasks", registry=registry)
    missing = TaskSpec.model_construct(**{**good.model_dump(), "task": str(tmp_path / "x.yaml")})
    with pytest.raises(SpecError, match=r"^objectives\.tasks\[1\]\.task: no task YAML"):
        validate_tasks([good, missing], field="objectives.tasks", registry=registry)
    bad_metric = TaskSpec(task=str(family.tasks["mc"]), metric="exact_match")
    with pytest.raises(SpecError, match=r"heldout\[0\]\.metric: is not a metric.*'acc'"):
        validate_tasks([bad_metric], field="heldout", registry=registry)
    bad_filter = TaskSpec(task=str(family.tasks["mc"]), filter="strict-match")
    with pytest.raises(SpecError, match=r"tasks\[0\]\.filter: is not a filter"):
        validate_tasks([bad_filter], registry=registry)
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: tiny_broken\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                      f"    test: {tmp_path / 'absent.jsonl'}\noutput_type: multiple_choice\n")
    with pytest.raises(SpecError, match=r"tasks\[0\]\.task: cannot be loaded"):
        validate_tasks([TaskSpec(task=str(broken))], registry=registry)
    message = ""
    try:
        validate_tasks([bad_metric], field="heldout", registry=registry)
    except SpecError as exc:
        message = str(exc)
    assert "\n" not in message


def test_builtin_names_are_indexed_only_when_named(registry):
    """Built-in lm-eval names resolve (and typos get a suggestion); costs the ~10 s index once."""
    validate_tasks([TaskSpec(task="arc_easy")], load=False, registry=registry)
    assert registry.resolve("arc_easy").builtin
    with pytest.raises(SpecError, match=r"tasks\[0\]\.task: is not an lm-eval task.*"
                       r"did you mean 'arc_easy'"):
        validate_tasks([TaskSpec(task="arc_eazy")], load=False, registry=registry)


def test_benchmark_key_tracks_what_changes_a_score(helpers, tmp_path):
    folder = tmp_path / "tasks"
    helpers.write_tasks(folder)
    task = ObjectiveSpec(task=str(folder / "mc.yaml"), limit=10, sample_seed=3)
    key = benchmark_key("r1", task, model_fingerprints=["base@1", "src@2"])
    assert key == benchmark_key("r1", task, model_fingerprints=["base@1", "src@2"])
    assert len(key) == 64 and int(key, 16) >= 0
    changed = [
        benchmark_key("r2", task, model_fingerprints=["base@1", "src@2"]),
        benchmark_key("r1", task, model_fingerprints=["base@1", "src@3"]),
        benchmark_key("r1", task.model_copy(update={"limit": 11}),
                      model_fingerprints=["base@1", "src@2"]),
        benchmark_key("r1", task.model_copy(update={"limit": 1.0}),
                      model_fingerprints=["base@1", "src@2"]),
        benchmark_key("r1", task.model_copy(update={"sample_seed": 4}),
                      model_fingerprints=["base@1", "src@2"]),
        benchmark_key("r1", task.model_copy(update={"num_fewshot": 1}),
                      model_fingerprints=["base@1", "src@2"]),
        benchmark_key("r1", task.model_copy(update={"gen_kwargs": {"max_gen_toks": 3}}),
                      model_fingerprints=["base@1", "src@2"]),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    same = benchmark_key("r1", task.model_copy(update={"batch_size": 4, "direction": "minimize"}),
                         model_fingerprints=["base@1", "src@2"])
    assert same == key  # batch size and direction do not change a score
    data = folder / "items.jsonl"
    data.write_text(data.read_text().replace("T:", "X:", 1))
    assert benchmark_key("r1", task, model_fingerprints=["base@1", "src@2"]) != key


def test_fixture_refs_resolve_through_the_fixtures_package(family, registry, monkeypatch):
    import mmmo.fixtures

    refs = {"fixture:tasks/mc.yaml": str(family.tasks["mc"])}
    monkeypatch.setattr(mmmo.fixtures, "resolve_ref", lambda ref: refs[ref])
    spec = TaskSpec(task="fixture:tasks/mc.yaml", limit=3)
    validate_tasks([spec], registry=registry)
    assert registry.resolve(spec.task).name == "tiny_mc"
    assert task_fingerprint(spec.task) == task_fingerprint(str(family.tasks["mc"]))
