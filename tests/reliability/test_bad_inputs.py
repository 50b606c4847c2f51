"""Bad inputs, through the real CLI: exit 2, one line naming the field and the fix, nothing written.

Every case is a broken spec or a broken environment given to ``mmmo run`` (in-process, through
the console-script entry point). Each must be refused before Prefect starts and before any model
is loaded (tripwires on the flow and on the Materializer), and must leave the working folder
(spec, storage, any existing study) byte for byte as it was. The spec-level messages themselves
are catalogued in ``tests/test_spec.py``; these cases are about what reaches the user.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Case:
    """One bad input: how to build it, and what the one line must say."""

    id: str
    field: str
    """The field (or option) the line must name, as it appears in the message."""
    fix: str
    """A fragment of the fix the line must give."""
    build: Callable[[Any], list[str]]
    """(context) -> the CLI arguments; may write files and set the environment."""
    fixtures: tuple[str, ...] = field(default_factory=tuple)


class Ctx:
    """What a case builds on: a folder, the storage in it, and pytest's monkeypatch."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch,
                 request: pytest.FixtureRequest) -> None:
        self.root = root
        self.storage = str(root / "studies")
        self.monkeypatch = monkeypatch
        self.request = request
        self.write = request.getfixturevalue("write_spec")
        self._tiny = request.getfixturevalue("tiny_spec")

    def spec(self, **changes: Any) -> str:
        return str(self.write(self.root / "spec.yaml", self._tiny(self.storage, **changes)))

    def raw(self, text: str) -> str:
        path = self.root / "spec.yaml"
        path.write_text(text)
        return str(path)

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


def _sources(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"path": "fixture:models/dbl"}, *extra]


def _unreachable_s3(ctx: Ctx) -> list[str]:
    ctx.monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{ctx.fixture('free_port')}")
    ctx.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    ctx.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    ctx.monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return ["run", ctx.spec(), "--storage", "s3://mmmo-nowhere/studies"]


def _existing_study(ctx: Ctx, *, lease: bool) -> list[str]:
    from mmmo.space import SearchSpace
    from mmmo.spec import load_spec
    from mmmo.study import StudyStore

    spec = load_spec(ctx.spec())
    store = StudyStore(spec.storage, spec.study_name)
    store.create(spec, dimension_names=list(SearchSpace.from_spec(spec).names))
    if lease:
        store.acquire_lease(ttl=600, holder="other-host:4242:abcd")
        return ["run", ctx.spec()]
    changed = {"tasks": [{"task": "fixture:tasks/srt.yaml", "limit": 4}]}
    return ["run", ctx.spec(objectives=changed)]


def _unknown_builtin_task(ctx: Ctx) -> list[str]:
    from mmmo.evaluation import tasks as task_module

    # a private registry: indexing lm-eval's built-in tasks must not leak into other tests
    ctx.monkeypatch.setattr(task_module, "_DEFAULT", task_module.TaskRegistry())
    return ["run", ctx.spec(objectives={"tasks": [{"task": "no_such_task_mmmo", "limit": 4}]})]


CASES = [
    # --- the spec file itself
    Case("spec-missing", "spec: file not found", "check the path",
         lambda c: ["run", str(c.root / "nope.yaml")]),
    Case("spec-empty", "spec: is empty", "write the spec's fields", lambda c: ["run", c.raw("")]),
    Case("spec-yaml-syntax", "spec: is not valid YAML at line 2", "fix the YAML syntax",
         lambda c: ["run", c.raw("name: x\nbase: path: a\n")]),
    Case("spec-not-a-mapping", "spec: must be a YAML mapping", "examples/fixture.yaml",
         lambda c: ["run", c.raw("- name: x\n- base: y\n")]),
    Case("unknown-top-level-field", "budget: is not a known field", "allowed here:",
         lambda c: ["run", c.spec(budget=30)]),
    # --- models
    Case("missing-model-path", "sources[1].path: no model folder", "point it at an HF model",
         lambda c: ["run", c.spec(sources=_sources({"path": "./models/gone"}))]),
    Case("unknown-fixture-model", "base.path: base (fixture:models/nope): cannot be read",
         "check the path", lambda c: ["run", c.spec(base={"path": "fixture:models/nope"})]),
    Case("hub-model-not-cached-offline", "sources[1].path: ", "HF_HUB_OFFLINE=0",
         lambda c: ["run", c.spec(sources=_sources({"path": "nobody-mmmo/no-such-model"}))]),
    Case("non-homologous-shape", "sources[1].path: source 'wide'", "use only fine-tunes",
         lambda c: ["run", c.spec(sources=_sources(
             {"name": "wide", "path": str(c.fixture("odd_models")["shape"])}))]),
    Case("tokenizer-mismatch", "sources[1].path: source 'swapped'", "use only fine-tunes",
         lambda c: ["run", c.spec(sources=_sources(
             {"name": "swapped", "path": str(c.fixture("odd_models")["vocab"])}))]),
    Case("duplicate-source-model", "sources[1].path: is the same model as sources[0]",
         "list each source model once",
         lambda c: ["run", c.spec(sources=[{"name": "a", "path": "fixture:models/dbl"},
                                           {"name": "b", "path": "fixture:models/dbl"}])]),
    # --- tasks
    Case("unknown-lm-eval-task", "objectives.tasks[0].task: is not an lm-eval task",
         "lm_eval ls tasks", _unknown_builtin_task),
    Case("unknown-fixture-task", "objectives.tasks[1].task: is not a task of the fixture family",
         "use one of fixture:tasks/dbl.yaml",
         lambda c: ["run", c.spec(objectives={"tasks": [
             {"task": "fixture:tasks/dbl.yaml", "limit": 4},
             {"task": "fixture:tasks/nope.yaml", "limit": 4}]})]),
    Case("task-yaml-defines-no-task", "objectives.tasks[0].task", "add a 'task: <name>'",
         lambda c: ["run", c.spec(objectives={"tasks": [
             {"task": str(c.write(c.root / "t" / "empty.yaml", {"foo": 1}))}]})]),
    Case("unknown-metric", "objectives.tasks[0].metric: is not a metric of this task",
         "use one of", lambda c: ["run", c.spec(objectives={"tasks": [
             {"task": "fixture:tasks/dbl.yaml", "metric": "accuracy", "limit": 4}]})]),
    Case("unknown-heldout-filter", "heldout[0].filter: is not a filter of this task",
         "use one of", lambda c: ["run", c.spec(heldout=[
             {"task": "fixture:tasks/pair.yaml", "filter": "strict-match", "limit": 4}])]),
    # --- search space and budget
    Case("bound-above-1", "merge.parameters.density: is outside the range", "within [0.0, 1.0]",
         lambda c: ["run", c.spec(merge={"parameters": {"density": [0.2, 1.5]}})]),
    Case("min-above-max", "sources[0].parameters.density: low bound is above the high bound",
         "write [low, high] with low <= high", lambda c: ["run", c.spec(sources=[
             {"path": "fixture:models/dbl", "parameters": {"density": [0.9, 0.3]}},
             {"path": "fixture:models/rev"}])]),
    Case("zero-budget", "optimizer.n_init: must be >= 1", "set a value >= 1",
         lambda c: ["run", c.spec(optimizer={"n_init": 0})]),
    Case("negative-iterations", "optimizer.iterations: must be >= 0", "set a value >= 0",
         lambda c: ["run", c.spec(optimizer={"iterations": -1})]),
    Case("negative-batch", "optimizer.batch_size: must be >= 1", "set a value >= 1",
         lambda c: ["run", c.spec(optimizer={"batch_size": -2})]),
    Case("negative-max-iterations", "--max-iterations: must be >= 0", "leave the option out",
         lambda c: ["run", c.spec(), "--max-iterations", "-1"]),
    Case("unknown-strategy", "optimizer.strategy: is not a known strategy", "use one of",
         lambda c: ["run", c.spec(optimizer={"strategy": "bayes"})]),
    # --- compute
    Case("absent-cuda-device", "compute.device: this machine has", "use auto or cpu",
         lambda c: ["run", c.spec(compute={"device": "cuda:99"})]),
    # --- storage and study
    Case("unknown-storage-protocol", "storage: unknown storage protocol 'ftp2'", "s3://",
         lambda c: ["run", c.spec(), "--storage", "ftp2://host/studies"]),
    Case("storage-driver-missing", "storage: needs a package that is not installed",
         "install the fsspec driver", lambda c: ["run", c.spec(storage="gcs://bucket/x")]),
    Case("unreachable-s3-endpoint", "storage: cannot be reached", "AWS_ENDPOINT_URL",
         _unreachable_s3),
    Case("missing-s3-bucket", "storage: bucket 'mmmo-no-such-bucket' does not exist",
         "create the bucket", lambda c: (c.fixture("s3_endpoint"), [
             "run", c.spec(storage="s3://mmmo-no-such-bucket/studies")])[1]),
    Case("unwritable-storage", "storage: cannot write in /proc", "writable folder",
         lambda c: ["run", c.spec(storage="/proc/mmmo-studies")]),
    Case("storage-under-a-file", "is a file, not a folder", "choose a folder",
         lambda c: ["run", c.spec(storage=str(c.write(c.root / "f.txt", "x") / "studies"))]),
    Case("bad-store-retry-window", "MMMO_STORE_RETRY_SECONDS='soon': is not a number",
         "set it to e.g. 300", lambda c: (
             c.monkeypatch.setenv("MMMO_STORE_RETRY_SECONDS", "soon"), ["run", c.spec()])[1]),
    Case("study-name-with-slash", "study: must be 1-63 lowercase", "rename it",
         lambda c: ["run", c.spec(), "--study", "a/b"]),
    Case("study-name-dotdot", "study: must be 1-63 lowercase", "rename it",
         lambda c: ["run", c.spec(), "--study", ".."]),
    Case("resume-dotdot", "study name '..'", "rename it",
         lambda c: ["resume", "..", "--storage", c.storage]),
    Case("existing-study-other-spec", "was created with a different objectives",
         "choose a new --study name", lambda c: _existing_study(c, lease=False)),
    Case("study-leased-by-live-run", "is held by a running search (other-host:4242:abcd",
         "wait for it to finish", lambda c: _existing_study(c, lease=True)),
]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()} | {str(p.relative_to(root)) + "/": b"" for p in root.rglob("*")
                               if p.is_dir()}


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the fixture's ``dbl`` with one tensor narrower, and with two token ids swapped."""
    from safetensors.torch import load_file, save_file

    from mmmo.fixtures import resolve_ref

    dbl = Path(resolve_ref("fixture:models/dbl"))
    root = tmp_path_factory.mktemp("odd")
    shape, vocab = root / "shape", root / "vocab"
    shutil.copytree(dbl, shape)
    shutil.copytree(dbl, vocab)
    state = load_file(shape / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    state[name] = state[name][:-8].clone()
    save_file(state, str(shape / "model.safetensors"), metadata={"format": "pt"})
    tok = json.loads((vocab / "tokenizer.json").read_text())
    v = tok["model"]["vocab"]
    v["A"], v["B"] = v["B"], v["A"]
    (vocab / "tokenizer.json").write_text(json.dumps(tok))
    return {"shape": shape, "vocab": vocab}


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records (and stops) any start of the flow or load of a model."""
    import flows.search
    from mmmo.merging import materialize

    hits: list[str] = []

    def flow(**_kw: Any) -> None:
        hits.append("flow")
        raise _Reached

    def load(*_a: Any, **_kw: Any) -> None:
        hits.append("model")
        raise _Reached

    monkeypatch.setattr(flows.search, "merge_search", flow)
    monkeypatch.setattr(materialize.Materializer, "__init__", load)
    return hits


class _Reached(Exception):
    """Raised by a tripwire."""


def test_the_unbroken_spec_reaches_the_flow(tmp_path: Path, mmmo_cli: Any, tiny_spec: Any,
                                            write_spec: Any, tripwires: list[str]) -> None:
    """The control: the cases below differ from a spec that passes every check."""
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "studies")))
    result = mmmo_cli("run", str(spec))
    assert tripwires == ["flow"], result.stderr
    assert result.code == 1 and "_Reached" in result.stderr
    assert not (tmp_path / "studies").exists()  # the checks themselves wrote nothing


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
        case: Case, tmp_path: Path, mmmo_cli: Any, tripwires: list[str],
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    ctx = Ctx(tmp_path, monkeypatch, request)
    args = case.build(ctx)
    before = _tree(tmp_path)
    result = mmmo_cli(*args)

    assert result.code == 2, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line
    assert case.field in line, line
    assert "fix" in line and case.fix in line.split("fix", 1)[1], line
    assert tripwires == []  # refused before the flow started and before any model was loaded
    assert _tree(tmp_path) == before  # nothing written: no storage, study unchanged
