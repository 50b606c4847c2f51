"""The search spec: examples load, and each invalid field gives its one-line error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmmo.errors import SpecError
from mmmo.spec import SearchSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    spec = load_spec(path)
    assert isinstance(spec, SearchSpec)
    assert spec.optimizer.budget >= spec.optimizer.n_init
    names = spec.objective_names()
    assert len(names) >= 2
    if spec.objectives.sparsity.enabled:
        assert names[-1] == "sparsity"
    else:
        assert "sparsity" not in names


def test_paper_example_is_the_papers_setup() -> None:
    spec = load_spec(ROOT / "examples" / "qwen15-7b-paper.yaml")
    assert spec.base.path == "Qwen/Qwen1.5-7B"
    assert len(spec.sources) == 3
    assert spec.merge.method == "dare_ties" and spec.merge.int8_mask
    assert spec.merge.random_seed == 0
    assert spec.objective_names() == ["ceval", "gsm8k", "sparsity"]
    assert spec.optimizer.budget == 30 and spec.optimizer.n_init == 10
    assert spec.merge.fixed_settings()["normalize"] is False
    assert spec.storage.startswith("s3://")


def test_fixture_example_defaults() -> None:
    spec = load_spec(ROOT / "examples" / "fixture.yaml")
    assert spec.study_name == "fixture-demo"
    assert [s.label for s in spec.sources] == ["dbl", "rev", "srt"]
    assert spec.merge.searched_parameters() == ["weight", "density"]
    assert spec.objectives.tasks[0].label == "dbl"


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "examples" / "fixture.yaml")
    out = tmp_path / "again.yaml"
    out.write_text(spec.to_yaml())
    assert load_spec(out) == spec


def test_file_url_and_relative_paths(tmp_path: Path) -> None:
    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (tmp_path / "t.yaml").write_text("task: t\n")
    data = _valid()
    data["base"] = {"path": "models/base"}
    data["objectives"]["tasks"][0]["task"] = "./t.yaml"
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    spec = load_spec(f"file://{spec_path}")
    assert spec.base.path == str(model)
    assert spec.objectives.tasks[0].task == str(tmp_path / "t.yaml")
    assert spec.objectives.tasks[0].label == "t"


def test_overrides_revalidate() -> None:
    spec = parse_spec(_valid())
    assert spec.with_overrides(study="other", storage="s3://bkt/p").study_name == "other"
    with pytest.raises(SpecError, match=r"^override: study: must be 1-63 lowercase"):
        spec.with_overrides(study="Not OK")


def _valid() -> dict[str, Any]:
    return {
        "name": "t",
        "base": {"path": "fixture:models/base"},
        "sources": [{"path": "fixture:models/a"}, {"path": "fixture:models/b"}],
        "objectives": {"tasks": [{"task": "fixture:tasks/a.yaml"},
                                 {"task": "fixture:tasks/b.yaml", "metric": "acc_norm"}]},
    }


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node: Any = out
    parts = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    for part in parts[:-1]:
        if isinstance(part, str) and part not in node:
            node[part] = {}
        node = node[part]
    if value is _DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


_DELETE = object()

# (change, expected start of the message after the source, expected fragment of the fix)
CATALOGUE: list[tuple[str, Any, str, str]] = [
    ("merge.method", "dare_tie", "merge.method: is not a method of mergekit's "
     "task-arithmetic family (got 'dare_tie')", "did you mean 'dare_ties'?"),
    ("objectives.tasks.0.limit", -3, "objectives.tasks[0].limit: must be a count >= 1 or a "
     "fraction in (0, 1] (got -3", "set a positive count"),
    ("objectives.tasks.0.limit", 1.5, "objectives.tasks[0].limit: must be a count",
     "fraction (e.g. 0.25)"),
    ("optimizer.strategy", "cma", "optimizer.strategy: is not a known strategy (got 'cma')",
     "did you mean 'cmaes'?"),
    ("optimiser", {"strategy": "mmmo"}, "optimiser: is not a known field",
     "did you mean 'optimizer'?"),
    ("objectives", _DELETE, "objectives: is required", "add 'objectives'"),
    ("merge.parameters.weight", [0.8, 0.2], "merge.parameters.weight: low bound is above "
     "the high bound (got [0.8, 0.2])", "low <= high"),
    ("merge.parameters.gamma", [0.0, 0.1], "merge.parameters.gamma: 'gamma' is not a "
     "per-model parameter of dare_ties", "use one of ['weight', 'density']"),
    ("merge.parameters.density", [0.0, 0.5], "merge.parameters.density: is outside the "
     "range mergekit accepts", "above 0"),
    ("merge.options.foo", 1.0, "merge.options.foo: 'foo' is not a shared option of "
     "dare_ties", "use one of ['lambda', 'rescale']"),
    ("merge.layer_groups", 0, "merge.layer_groups: must be >= 1 (got 0)",
     "set a value >= 1"),
    ("compute.device", "gpu", "compute.device: is not a device (got 'gpu')",
     "cuda:<index>"),
    ("compute.dtype", "fp8", "compute.dtype: is not an allowed value (got 'fp8')",
     "use 'float32', 'bfloat16' or 'float16'"),
    ("compute.batch_size", 0, "compute.batch_size: must be >= 1 (got 0)", "or 'auto'"),
    ("pick.primary", "nope", "pick.primary: is not an objective (got 'nope')",
     "use one of ['a', 'b', 'sparsity']"),
    ("pick.policy", "weighted", "pick.weights: policy 'weighted' needs weights",
     "add pick.weights"),
    ("pick.constraints", [{"objective": "sparsity"}], "pick.constraints[0].objective: "
     "needs a bound", "add min:"),
    ("storage", "s4://bucket/x", "storage: unknown storage protocol 's4'", "s3://"),
    ("study", "Bad Name", "study: must be 1-63 lowercase letters", "rename it"),
    ("sources.1.path", "fixture:models/base", "sources[1].path: is the base model itself",
     "list only fine-tuned"),
    ("sources.1.name", "a", "sources[1].name: two sources share this name (got 'a')",
     "distinct name"),
    ("sources", [], "sources: needs at least 1 item(s) (got [])", "list at least 1"),
    ("base.path", "./does-not-exist", "base.path: no model folder with a config.json",
     "point it at an HF model folder"),
    ("base.path", "not a hub id!", "base.path: is neither an existing folder nor a hub id",
     "org/name"),
    ("sources.0.path", "fixture:base", "sources[0].path: fixture models live under "
     "fixture:models/", "fixture:models/<name>"),
    ("objectives.tasks.0.task", "./missing.yaml", "objectives.tasks[0].task: no task YAML at",
     "fix the path"),
    ("objectives.tasks.0.direction", "max", "objectives.tasks[0].direction: is not an "
     "allowed value (got 'max')", "use 'maximize' or 'minimize'"),
    ("objectives.tasks.1.name", "a", "objectives.tasks[1].name: two objectives share this "
     "name", "distinct name"),
    ("optimizer.settings.bogus", 1, "optimizer.settings.bogus: is not a setting of "
     "strategy mmmo (got 1)", "settings of mmmo are: acquisition"),
    ("optimizer.settings.n_init", 5, "optimizer.settings.n_init: 'n_init' is set by the "
     "spec itself", "set optimizer.n_init instead"),
    ("optimizer.n_init", "ten", "optimizer.n_init: has the wrong type (got 'ten')",
     "write a whole number"),
    ("compute.batch_size", "big", "compute.batch_size: ", "'auto'"),
    ("merge.normalize", "maybe", "merge.normalize: has the wrong type (got 'maybe')",
     "write true or false"),
    ("heldout", {"task": "x"}, "heldout: has the wrong type", "write a list"),
    ("sources.0.parameters.weight", [0.0, 20.0], "sources[0].parameters.weight: is outside "
     "the range", "within [-10.0, 10.0]"),
    ("base.parameters", {"weight": 0.5}, "base.parameters: the base takes no merge "
     "parameters", "move them to sources"),
]


@pytest.mark.parametrize(("field", "value", "message", "fix"), CATALOGUE,
                         ids=[f"{c[0]}={c[1]!r}"[:60] for c in CATALOGUE])
def test_invalid_field_gives_one_line(tmp_path: Path, field: str, value: Any,
                                      message: str, fix: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_set(_valid(), field, value)))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {message}"), text
    assert "; fix: " in text and fix in text.split("; fix: ", 1)[1], text


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nbase: {path: a\n")
    with pytest.raises(SpecError, match=r"spec: is not valid YAML at line 3, column 1; fix"):
        load_spec(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^spec: file not found \(got '.*nope.yaml'\)"):
        load_spec(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match=r"spec: must be a YAML mapping of fields"):
        load_spec(path)
