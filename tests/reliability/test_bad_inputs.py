"""Bad inputs, through the real CLI: exit 2, one line naming the field and the fix, nothing written.

Every case is a broken spec, a broken environment or a broken combination of both given to
``mmmo`` (in-process, through the console-script entry point), as a user writing a spec for
their own models and tasks would get it wrong. Each must be refused before the Prefect server
starts, before the flow runs and before any model is loaded (tripwires on all three), with
exactly one line on the console (nothing on stdout), and must leave everything as it was: the
case's folder (spec, storage, any existing study), the working directory (a folder of its own)
and the folders above it. The spec-level messages are also catalogued in ``tests/test_spec.py``;
these cases are about what reaches the user.
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

    def run(self, *extra: str, **changes: Any) -> list[str]:
        return ["run", self.spec(**changes), *extra]

    def raw(self, text: str) -> str:
        path = self.root / "spec.yaml"
        path.write_text(text)
        return str(path)

    def tiny_yaml(self, **changes: Any) -> str:
        import yaml

        return yaml.safe_dump(self._tiny(self.storage, **changes), sort_keys=False)

    def env(self, **values: str) -> None:
        for key, value in values.items():
            self.monkeypatch.setenv(key, value)

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def task_yaml(self, name: str, text: str) -> str:
        path = self.root / "tasks" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)


def _sources(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"path": "fixture:models/dbl"}, *extra]


def _tasks(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": [{"limit": 4, **t} for t in tasks]}


DBL = {"task": "fixture:tasks/dbl.yaml"}
REV = {"task": "fixture:tasks/rev.yaml"}


def _user_task(c: Ctx, name: str = "mine.yaml", *, extra: str = "", head: str = "") -> str:
    """A user-written task YAML over the fixture's dbl data, without aggregation."""
    from mmmo.fixtures import resolve_ref

    data = resolve_ref("fixture:tasks/dbl.jsonl")
    return c.task_yaml(name, f"""{head}task: my_{name.split('.')[0]}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
{extra}""")


def _unreachable_s3(ctx: Ctx) -> list[str]:
    ctx.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{ctx.fixture('free_port')}",
            AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1")
    return ctx.run("--storage", "s3://mmmo-nowhere/studies")


def _unresolvable_s3(ctx: Ctx) -> list[str]:
    ctx.env(AWS_ENDPOINT_URL="http://mmmo-no-such-host.invalid:9000", AWS_ACCESS_KEY_ID="k",
            AWS_SECRET_ACCESS_KEY="s", AWS_DEFAULT_REGION="us-east-1")
    return ctx.run("--storage", "s3://mmmo-nowhere/studies")


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
    return ctx.run(objectives=_tasks({"task": "no_such_task_mmmo"}))


def _odd(c: Ctx, name: str) -> str:
    return str(c.fixture("odd_models")[name])


# Malformed storage URLs: each would once have become a local folder named after the URL (or a
# failure inside the flow). (id, url, what the line says, a fragment of the fix)
MALFORMED = [
    ("s3-nothing", "s3://", "names no bucket", "s3://<bucket>/<prefix>"),
    ("s3-empty-bucket", "s3:///studies", "names no bucket", "s3://<bucket>/<prefix>"),
    ("gs-nothing", "gs://", "names no bucket", "gs://<bucket>"),
    ("http-nothing", "http://", "names no host", "http://<host>"),
    ("memory-nothing", "memory://", "names no folder", "memory://<folder>"),
    ("file-nothing", "file://", "names no folder", "file:///srv/studies"),
    ("missing-slashes", "s3:my-bucket/studies", "looks like a URL (s3://) without '//'",
     "write s3://"),
    ("chained-url", "simplecache::s3://my-bucket/x", "chained fsspec URLs", "target URL"),
    ("bad-s3-bucket-name", "s3://My_Bucket/x", "'My_Bucket' is not a valid S3 bucket name", "3-63"),
]

CASES = [
    # --- the spec file itself
    Case("spec-missing", "spec: file not found", "check the path",
         lambda c: ["run", str(c.root / "nope.yaml")]),
    Case("spec-is-a-folder", "spec: is a folder, not a YAML file", "spec's YAML file",
         lambda c: ["run", str(c.root)]),
    Case("spec-empty", "spec: is empty", "write the spec's fields", lambda c: ["run", c.raw("")]),
    Case("spec-yaml-syntax", "spec: is not valid YAML at line 2", "fix the YAML syntax",
         lambda c: ["run", c.raw("name: x\nbase: path: a\n")]),
    Case("spec-not-a-mapping", "spec: must be a YAML mapping", "examples/fixture.yaml",
         lambda c: ["run", c.raw("- name: x\n- base: y\n")]),
    Case("duplicate-top-level-key", "spec.yaml: optimizer: is given twice (lines ", "keep one",
         lambda c: ["run", c.raw(c.tiny_yaml() + "optimizer: {strategy: mmmo}\n")]),
    Case("duplicate-nested-key", "spec.yaml: merge.parameters.weight: is given twice",
         "keep one", lambda c: ["run", c.raw(c.tiny_yaml(merge={}).replace(
             "merge: {}", "merge:\n  parameters:\n    weight: [0, 1]\n    weight: [0.2, 0.8]"))]),
    Case("unknown-top-level-field", "budget: is not a known field", "allowed here:",
         lambda c: c.run(budget=30)),
    Case("unknown-nested-field", "merge.methd: is not a known field", "did you mean 'method'",
         lambda c: c.run(merge={"methd": "ties"})),
    Case("wrong-type", "optimizer.n_init: has the wrong type", "whole number",
         lambda c: c.run(optimizer={"n_init": "ten"})),
    # --- models
    Case("missing-model-path", "sources[1].path: no model folder", "point it at an HF model",
         lambda c: c.run(sources=_sources({"path": "./models/gone"}))),
    Case("empty-model-path", "base.path: is empty", "fixture:models/<name>",
         lambda c: c.run(base={"path": " "})),
    Case("unknown-fixture-model", "base.path: base (fixture:models/nope): cannot be read",
         "check the path", lambda c: c.run(base={"path": "fixture:models/nope"})),
    Case("hub-model-not-cached-offline", "sources[1].path: ", "HF_HUB_OFFLINE=0",
         lambda c: c.run(sources=_sources({"path": "nobody-mmmo/no-such-model"}))),
    Case("non-homologous-shape", "sources[1].path: source 'wide'", "use only fine-tunes",
         lambda c: c.run(sources=_sources({"name": "wide", "path": _odd(c, "shape")}))),
    Case("non-homologous-config", "sources[1].path: source 'act'", "use only fine-tunes",
         lambda c: c.run(sources=_sources({"name": "act", "path": _odd(c, "config")}))),
    Case("tokenizer-mismatch", "sources[1].path: source 'swapped'", "use only fine-tunes",
         lambda c: c.run(sources=_sources({"name": "swapped", "path": _odd(c, "vocab")}))),
    Case("no-safetensors", "sources[1].path: source 'bin'", "convert the checkpoint",
         lambda c: c.run(sources=_sources({"name": "bin", "path": _odd(c, "bin")}))),
    Case("config-not-json", "sources[1].path: source 'broken'", "check the path",
         lambda c: c.run(sources=_sources({"name": "broken", "path": _odd(c, "json")}))),
    Case("duplicate-source-model", "sources[1].path: is the same model as sources[0]",
         "list each source model once",
         lambda c: c.run(sources=[{"name": "a", "path": "fixture:models/dbl"},
                                  {"name": "b", "path": "fixture:models/dbl"}])),
    Case("source-is-the-base", "sources[0].path: is the base model itself",
         "list only fine-tuned", lambda c: c.run(sources=[{"path": "fixture:models/base"}])),
    Case("duplicate-source-names", "sources[1].name: two sources share this name",
         "distinct name", lambda c: c.run(sources=[{"name": "x", "path": "fixture:models/dbl"},
                                                   {"name": "x", "path": "fixture:models/rev"}])),
    Case("base-with-parameters", "base.parameters: the base takes no merge parameters",
         "move them to sources",
         lambda c: c.run(base={"path": "fixture:models/base", "parameters": {"weight": 1}})),
    # --- merge method and search space
    Case("unknown-method", "merge.method: is not a method", "did you mean 'dare_ties'",
         lambda c: c.run(merge={"method": "dare_tie"})),
    Case("parameter-not-of-method", "merge.parameters.density: 'density' is not a per-model "
         "parameter of linear", "use one of ['weight']",
         lambda c: c.run(merge={"method": "linear", "parameters": {"density": [0.2, 0.8]}})),
    Case("parameter-never-read", "merge.parameters.density: mergekit's task_arithmetic "
         "declares 'density' but never reads it", "remove it",
         lambda c: c.run(merge={"method": "task_arithmetic",
                                "parameters": {"density": [0.2, 0.8]}})),
    Case("override-not-of-method", "sources[0].parameters.gamma: 'gamma' is not a per-model "
         "parameter of dare_ties", "use one of", lambda c: c.run(sources=[
             {"path": "fixture:models/dbl", "parameters": {"gamma": [0.0, 0.1]}}])),
    Case("unknown-shared-option", "merge.options.foo: 'foo' is not a shared option",
         "use one of", lambda c: c.run(merge={"options": {"foo": 1.0}})),
    Case("bound-above-1", "merge.parameters.density: is outside the range", "within [0.0, 1.0]",
         lambda c: c.run(merge={"parameters": {"density": [0.2, 1.5]}})),
    Case("min-above-max", "sources[0].parameters.density: low bound is above the high bound",
         "write [low, high] with low <= high", lambda c: c.run(sources=[
             {"path": "fixture:models/dbl", "parameters": {"density": [0.9, 0.3]}},
             {"path": "fixture:models/rev"}])),
    Case("layer-groups-above-depth", "merge.layer_groups: is more than the models' 4 layers",
         "use 1 to 4", lambda c: c.run(merge={"layer_groups": 20})),
    Case("layer-groups-zero", "merge.layer_groups: must be >= 1", "set a value >= 1",
         lambda c: c.run(merge={"layer_groups": 0})),
    Case("della-without-room", "sources[0].parameters: no density in source 'dbl''s bounds",
         "lower epsilon", lambda c: c.run(merge={"method": "della"}, sources=[
             {"path": "fixture:models/dbl",
              "parameters": {"density": [0.1, 0.15], "epsilon": 0.2}}])),
    Case("fewer-recipes-than-budget", "merge.rounding: leaves at most 64 distinct recipes for "
         "a budget of 65 trials", "round to more decimals",
         lambda c: c.run(merge={"rounding": 0}, optimizer={"strategy": "random", "n_init": 65,
                                                           "iterations": 0})),
    Case("nothing-to-search", "merge.parameters: fixes every parameter", "give at least one",
         lambda c: c.run(merge={"parameters": {"weight": 0.5, "density": 0.5}})),
    # --- objectives and tasks
    Case("no-objectives", "objectives.tasks: needs at least 1 item", "list at least 1",
         lambda c: c.run(objectives={"tasks": []})),
    Case("unknown-lm-eval-task", "objectives.tasks[0].task: is not an lm-eval task",
         "lm_eval ls tasks", _unknown_builtin_task),
    Case("unknown-fixture-task", "objectives.tasks[1].task: is not a task of the fixture family",
         "use one of fixture:tasks/dbl.yaml",
         lambda c: c.run(objectives=_tasks(DBL, {"task": "fixture:tasks/nope.yaml"}))),
    Case("task-yaml-missing", "objectives.tasks[0].task: no task YAML at", "fix the path",
         lambda c: c.run(objectives=_tasks({"task": "./tasks/nope.yaml"}))),
    Case("task-yaml-defines-no-task", "objectives.tasks[0].task", "add a 'task: <name>'",
         lambda c: c.run(objectives=_tasks({"task": c.task_yaml("empty.yaml", "foo: 1\n")}))),
    Case("task-yaml-syntax", "objectives.tasks[0].task: cannot read task YAML bad.yaml",
         "fix the YAML", lambda c: c.run(objectives=_tasks(
             {"task": c.task_yaml("bad.yaml", "task: x\n  dataset_path: [\n")}))),
    Case("task-yaml-duplicate-key", "objectives.tasks[0].task: task YAML dup.yaml: "
         "output_type is given twice (lines 7 and 13)", "keep one",
         lambda c: c.run(objectives=_tasks(
             {"task": _user_task(c, "dup.yaml", extra="output_type: multiple_choice\n")}))),
    Case("task-yaml-included-duplicate-key", "heldout[0].task: task YAML shared.yaml: "
         "metadata.version is given twice (lines 2 and 3)", "keep one",
         lambda c: (c.task_yaml("shared.yaml", "metadata:\n  version: 1\n  version: 2\n"),
                    c.run(heldout=[{"task": _user_task(c, "inc.yaml", head="include: "
                                                       "shared.yaml\n"), "limit": 4}]))[1]),
    Case("task-dataset-missing", "objectives.tasks[0].task: cannot be loaded",
         "available offline", lambda c: c.run(objectives=_tasks({"task": c.task_yaml(
             "nodata.yaml", "task: my_nodata\ndataset_path: json\ndataset_kwargs:\n  "
             f"data_files:\n    test: {c.root / 'gone.jsonl'}\noutput_type: "
             "multiple_choice\ndoc_to_text: prompt\ndoc_to_choice: choices\n"
             "doc_to_target: label\nmetric_list:\n  - metric: acc\n")}))),
    Case("unknown-metric", "objectives.tasks[0].metric: is not a metric of this task",
         "use one of", lambda c: c.run(objectives=_tasks({**DBL, "metric": "accuracy"}))),
    Case("unknown-heldout-filter", "heldout[0].filter: is not a filter of this task",
         "use one of", lambda c: c.run(heldout=[
             {"task": "fixture:tasks/pair.yaml", "filter": "strict-match", "limit": 4}])),
    Case("limit-fraction-above-1", "objectives.tasks[0].limit: must be a count >= 1 or a "
         "fraction", "set a positive count", lambda c: c.run(objectives=_tasks(
             {**DBL, "limit": 1.5}))),
    Case("limit-zero", "objectives.tasks[0].limit", "set a positive count",
         lambda c: c.run(objectives=_tasks({**DBL, "limit": 0}))),
    Case("duplicate-objective-names", "objectives.tasks[1].name: two objectives share this "
         "name", "distinct name", lambda c: c.run(objectives=_tasks(
             {**DBL, "name": "x"}, {**REV, "name": "x"}))),
    Case("objective-named-sparsity", "objectives.tasks[0].name: two objectives share this name",
         "distinct name", lambda c: c.run(objectives=_tasks({**DBL, "name": "sparsity"}))),
    Case("heldout-named-like-an-objective", "heldout[0].name: is already the name of an "
         "objective", "distinct name", lambda c: c.run(heldout=[
             {"task": "fixture:tasks/pair.yaml", "name": "dbl", "limit": 4}])),
    # --- optimizer and budget
    Case("zero-budget", "optimizer.n_init: must be >= 1", "set a value >= 1",
         lambda c: c.run(optimizer={"n_init": 0})),
    Case("negative-iterations", "optimizer.iterations: must be >= 0", "set a value >= 0",
         lambda c: c.run(optimizer={"iterations": -1})),
    Case("negative-batch", "optimizer.batch_size: must be >= 1", "set a value >= 1",
         lambda c: c.run(optimizer={"batch_size": -2})),
    Case("negative-max-iterations", "--max-iterations: must be >= 0", "leave the option out",
         lambda c: c.run("--max-iterations", "-1")),
    Case("unknown-strategy", "optimizer.strategy: is not a known strategy", "use one of",
         lambda c: c.run(optimizer={"strategy": "bayes"})),
    Case("a-setting-of-another-strategy", "optimizer.settings.surrogate: is not a setting "
         "of strategy random", "settings of random are", lambda c: c.run(
             optimizer={"strategy": "random", "settings": {"surrogate": "saas"}})),
    Case("misspelt-strategy-setting", "optimizer.settings.acquisiton: is not a setting of "
         "strategy mmmo", "settings of mmmo are", lambda c: c.run(
             optimizer={"strategy": "mmmo", "settings": {"acquisiton": "qehvi"}})),
    Case("setting-the-spec-sets", "optimizer.settings.n_init: 'n_init' is set by the spec "
         "itself", "set optimizer.n_init instead", lambda c: c.run(
             optimizer={"strategy": "random", "settings": {"n_init": 3}})),
    # --- the final pick
    Case("pick-unknown-policy", "pick.policy: is not an allowed value", "'knee'",
         lambda c: c.run(pick={"policy": "best"})),
    Case("pick-primary-not-an-objective", "pick.primary: is not an objective", "use one of",
         lambda c: c.run(pick={"primary": "mmlu"})),
    Case("pick-weighted-without-weights", "pick.weights: policy 'weighted' needs weights",
         "add pick.weights", lambda c: c.run(pick={"policy": "weighted"})),
    Case("pick-negative-weight", "pick.weights.dbl: must be a finite weight >= 0",
         "weight >= 0", lambda c: c.run(pick={"policy": "weighted",
                                             "weights": {"dbl": -1, "rev": 1}})),
    Case("pick-weights-all-zero", "pick.weights: are all 0", "positive weight",
         lambda c: c.run(pick={"policy": "weighted", "weights": {"dbl": 0, "rev": 0}})),
    Case("pick-constraint-unknown-objective", "pick.constraints[0].objective: is not an "
         "objective", "use one of", lambda c: c.run(
             pick={"constraints": [{"objective": "mmlu", "min": 0.5}]})),
    Case("pick-constraint-min-above-max", "pick.constraints[0]: min is above max",
         "write min <= max", lambda c: c.run(
             pick={"constraints": [{"objective": "dbl", "min": 0.9, "max": 0.1}]})),
    Case("pick-constraint-without-bound", "pick.constraints[0].objective: needs a bound",
         "add min:", lambda c: c.run(pick={"constraints": [{"objective": "dbl"}]})),
    # --- baselines against their method
    Case("baseline-unknown-method", "baselines[0].method: is not a method", "use one of",
         lambda c: c.run(baselines=[{"method": "averaging"}])),
    Case("baseline-density-without-sparsification", "baselines[0].density: linear has no "
         "density", "remove density", lambda c: c.run(
             baselines=[{"method": "linear", "density": 0.3}])),
    Case("baseline-zero-weight", "baselines[0].weight: every source weighs 0",
         "use a positive weight", lambda c: c.run(baselines=[{"weight": 0}])),
    Case("baseline-weights-do-not-sum-to-1", "baselines[0].weight: the 3 weights sum to 3",
         "normalize: true", lambda c: c.run(
             baselines=[{"method": "linear", "normalize": False, "weight": 1.0}])),
    Case("baseline-della-density", "baselines[0].density: della needs density +/- epsilon",
         "use a density in", lambda c: c.run(baselines=[{"method": "della", "density": 0.9}])),
    Case("baseline-duplicate-name", "baselines[1].name: is already the name of a model or "
         "another baseline", "distinct name", lambda c: c.run(
             baselines=[{"name": "even"}, {"name": "even", "weight": 0.5}])),
    # --- compute and evaluation
    Case("absent-cuda-device", "compute.device: this machine has", "use auto or cpu",
         lambda c: c.run(compute={"device": "cuda:99"})),
    Case("absent-mps-device", "compute.device: MPS is not available", "use auto or cpu",
         lambda c: c.run(compute={"device": "mps"})),
    Case("not-a-device", "compute.device: is not a device", "use auto, cpu, cuda",
         lambda c: c.run(compute={"device": "gpu"})),
    Case("unknown-dtype", "compute.dtype: is not an allowed value", "'bfloat16'",
         lambda c: c.run(compute={"dtype": "float8"})),
    Case("batch-size-word", "compute.batch_size: is neither a number nor 'auto'",
         "'auto'", lambda c: c.run(compute={"batch_size": "big"})),
    Case("runner-address-for-threads", "compute.runner_address: is only used with runner: "
         "dask", "remove runner_address", lambda c: c.run(
             compute={"device": "cpu", "runner_address": "tcp://10.0.0.1:8786"})),
    Case("negative-retry-delay", "evaluation.retry_delay_seconds: must be seconds >= 0",
         "[10, 60]", lambda c: c.run(evaluation={"retry_delay_seconds": [10, -1]})),
    Case("too-many-retries", "evaluation.retries: must be <= 20", "set a value <= 20",
         lambda c: c.run(evaluation={"retries": 50})),
    # --- storage: malformed URLs (nothing may be created, see MALFORMED), then the probes
    *[Case(f"storage-{cid}", f"storage: {what}", fix, lambda c, u=url: c.run(storage=u))
      for cid, url, what, fix in MALFORMED],
    Case("storage-override-malformed", "override: storage: names no bucket", "s3://<bucket>",
         lambda c: c.run("--storage", "s3://")),
    Case("resume-with-malformed-storage", "storage: names no bucket", "gs://<bucket>",
         lambda c: ["resume", "demo", "--storage", "gs://"]),
    Case("status-with-malformed-storage", "storage: names no host", "http://<host>",
         lambda c: ["status", "demo", "--storage", "http:///x"]),
    Case("unknown-storage-protocol", "storage: unknown storage protocol 'ftp2'", "s3://",
         lambda c: c.run("--storage", "ftp2://host/studies")),
    Case("storage-driver-missing", "storage: needs a package that is not installed",
         "install the fsspec driver", lambda c: c.run(storage="gcs://bucket/x")),
    Case("storage-read-only-protocol", "storage: http:// is read-only", "use a writable store",
         lambda c: c.run(storage="http://127.0.0.1:1/studies")),
    Case("storage-host-does-not-resolve", "storage: host 'mmmo-no-such-host.invalid' does "
         "not resolve", "check the host in the URL",
         lambda c: c.run(storage="ftp://mmmo-no-such-host.invalid/studies")),
    Case("storage-other-protocol-host-does-not-resolve", "storage: host "
         "'mmmo-no-such-host.invalid' does not resolve", "the network (DNS)",
         lambda c: c.run(storage="webhdfs://mmmo-no-such-host.invalid:9870/studies")),
    Case("storage-host-refuses", "storage: cannot be reached: 127.0.0.1:", "that the server runs",
         lambda c: c.run(storage=f"ftp://127.0.0.1:{c.fixture('free_port')}/studies")),
    Case("s3-endpoint-does-not-resolve", "storage: host 'mmmo-no-such-host.invalid' does not "
         "resolve", "AWS_ENDPOINT_URL", _unresolvable_s3),
    Case("unreachable-s3-endpoint", "storage: cannot be reached", "AWS_ENDPOINT_URL",
         _unreachable_s3),
    Case("missing-s3-bucket", "storage: bucket 'mmmo-no-such-bucket' does not exist",
         "create the bucket", lambda c: (c.fixture("s3_endpoint"), c.run(
             storage="s3://mmmo-no-such-bucket/studies"))[1]),
    Case("unwritable-storage", "storage: cannot write in /proc", "writable folder",
         lambda c: c.run(storage="/proc/mmmo-studies")),
    Case("storage-under-a-file", "is a file, not a folder", "choose a folder",
         lambda c: c.run(storage=str(c.write(c.root / "f.txt", "x") / "studies"))),
    # --- the environment
    Case("bad-store-retry-window", "MMMO_STORE_RETRY_SECONDS: is not a number of seconds",
         "set it to e.g. 300", lambda c: (c.env(MMMO_STORE_RETRY_SECONDS="soon"), c.run())[1]),
    Case("bad-fault-plan", "MMMO_FAULTS: has a bad entry", "raise=0.1",
         lambda c: (c.env(MMMO_FAULTS="boom"), c.run())[1]),
    # --- the study
    Case("study-name-with-slash", "study: must be 1-63 lowercase", "rename it",
         lambda c: c.run("--study", "a/b")),
    Case("study-name-dotdot", "study: must be 1-63 lowercase", "rename it",
         lambda c: c.run("--study", "..")),
    Case("study-field-invalid", "study: must be 1-63 lowercase", "rename it",
         lambda c: c.run(study="My Study")),
    Case("resume-dotdot", "study name is not 1-63", "rename it",
         lambda c: ["resume", "..", "--storage", c.storage]),
    Case("resume-missing-study", "study 'nope' does not exist", "mmmo run SPEC --study NAME",
         lambda c: ["resume", "nope", "--storage", c.storage]),
    Case("existing-study-other-spec", "was created with a different objectives",
         "choose a new --study name", lambda c: _existing_study(c, lease=False)),
    Case("study-leased-by-live-run", "is held by a running search (other-host:4242:abcd",
         "wait for it to finish", lambda c: _existing_study(c, lease=True)),
    Case("pick-command-unknown-policy", "--policy: is not a pick policy", "knee",
         lambda c: ["pick", "demo", "--policy", "best", "--storage", c.storage]),
    Case("export-command-without-out", "--out: is missing", "destination folder",
         lambda c: ["export", "demo", "--storage", c.storage]),
    # --- the engine: runners, schedules, fidelity, confirmation, warm start, backends
    Case("ray-runner", "compute.runner: Ray is not supported", "use runner: dask",
         lambda c: c.run(compute={"device": "cpu", "runner": "ray"})),
    Case("unknown-schedule", "optimizer.schedule: is not an allowed value", "'async'",
         lambda c: c.run(optimizer={"strategy": "random", "n_init": 2, "iterations": 0,
                                    "schedule": "asap"})),
    Case("fidelity-levels-not-increasing", "optimizer.fidelity.levels: must increase",
         "from the fewest documents", lambda c: c.run(optimizer={
             "n_init": 2, "iterations": 0, "fidelity": {"levels": [0.5, 0.25, 1.0]}})),
    Case("fidelity-levels-end-below-the-subsample", "optimizer.fidelity.levels: fractions "
         "must lie in (0, 1] and end with 1.0", "end with 1.0", lambda c: c.run(optimizer={
             "n_init": 2, "iterations": 0, "fidelity": {"levels": [0.25, 0.5]}})),
    Case("fidelity-levels-mixed", "optimizer.fidelity.levels: mixes counts and fractions",
         "all fractions", lambda c: c.run(optimizer={
             "n_init": 2, "iterations": 0, "fidelity": {"levels": [2, 1.0]}})),
    Case("fidelity-counts-short-of-the-limit", "optimizer.fidelity.levels: the last level "
         "must be the whole subsample (4 documents of dbl)", "end the levels with 4",
         lambda c: c.run(optimizer={"n_init": 2, "iterations": 0,
                                    "fidelity": {"levels": [1, 2]}})),
    Case("fidelity-eta-1", "optimizer.fidelity.eta: must be > 1.0", "a value > 1.0",
         lambda c: c.run(optimizer={"n_init": 2, "iterations": 0,
                                    "fidelity": {"levels": [0.5, 1.0], "eta": 1}})),
    Case("fidelity-first-level-the-whole-subsample", "optimizer.fidelity.levels: its first "
         "level gives dbl 4 of its 4 documents", "below the whole subsample",
         lambda c: c.run(optimizer={
             "n_init": 2, "iterations": 0, "fidelity": {"levels": [0.9, 1.0]}})),
    Case("confirm-limit-above-1", "confirm.limit: must be rest, a count >= 1 or a fraction",
         "rest, 200 or 0.5", lambda c: c.run(confirm={"limit": 1.5})),
    Case("use-confirmed-without-candidates", "pick.use_confirmed: needs confirmed candidates",
         "confirm.top_k >= 1", lambda c: c.run(pick={"use_confirmed": True},
                                                 confirm={"top_k": 0})),
    Case("objective-leaves-nothing-to-confirm", "objectives.tasks[0].limit: uses all 300 "
         "documents of dbl", "lower it (e.g. to 200)",
         lambda c: c.run(objectives=_tasks({**DBL, "limit": 1.0}))),
    Case("warm-start-from-no-study", "optimizer.warm_start[0]: names no study",
         "<storage>/<study>", lambda c: c.run(optimizer={
             "n_init": 2, "iterations": 0, "warm_start": [c.storage + "/nope"]})),
    Case("warm-start-from-another-search", "optimizer.warm_start[0]: searched a different "
         "merge method (ties vs dare_ties)", "the same models, method",
         lambda c: _other_donor(c)),
    Case("vllm-without-engine", "compute.backend: no engine can be started here",
         "make setup-vllm", lambda c: (c.env(MMMO_VLLM_PYTHON=str(c.root / "no-python")),
                                       c.run(compute={"device": "cpu", "backend": "vllm"}))[1]),
    Case("vllm-settings-with-hf", "compute.vllm: is set but compute.backend is hf",
         "set compute.backend: vllm", lambda c: c.run(compute={"device": "cpu",
                                                                "vllm": {"num_concurrent": 2}})),
    # --- combinations: one line, for the first problem in the order they are checked
    Case("bad-method-and-malformed-storage", "merge.method: is not a method", "dare_ties",
         lambda c: c.run(merge={"method": "dare_tie"}, storage="s3://")),
    Case("duplicate-key-and-invalid-value", "spec.yaml: optimizer: is given twice", "keep one",
         lambda c: ["run", c.raw(c.tiny_yaml() + "optimizer: {n_init: 0}\n")]),
    Case("unknown-model-and-unknown-task", "base.path: base (fixture:models/nope)",
         "check the path", lambda c: c.run(base={"path": "fixture:models/nope"},
                                           objectives=_tasks({"task": "fixture:tasks/x.yaml"}))),
    Case("overrides-storage-and-study", "override: storage: names no bucket", "s3://<bucket>",
         lambda c: c.run("--storage", "s3://", "--study", "Bad Name")),
    Case("valid-spec-bad-environment", "compute.device: this machine has", "use auto or cpu",
         lambda c: (c.env(MMMO_STORE_RETRY_SECONDS="soon"),
                    c.run(compute={"device": "cuda:7"}, storage="/proc/x"))[1]),
]


def _other_donor(c: Ctx) -> list[str]:
    """A donor study of another method, made by hand (its spec and metadata only)."""
    from mmmo.spec import parse_spec
    from mmmo.study import StudyStore

    donor = parse_spec(c._tiny(c.storage, name="donor", merge={"method": "ties"}))
    StudyStore(c.storage, "donor").create(donor, dimension_names=[])
    return c.run(optimizer={"n_init": 2, "iterations": 0,
                            "warm_start": [c.storage + "/donor"]})


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()} | {str(p.relative_to(root)) + "/": b"" for p in root.rglob("*")
                               if p.is_dir()}


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the fixture's ``dbl``, each broken one way: a narrower tensor, two token ids
    swapped, another activation in config.json, weights only as .bin, config.json not JSON."""
    from safetensors.torch import load_file, save_file

    from mmmo.fixtures import resolve_ref

    dbl = Path(resolve_ref("fixture:models/dbl"))
    root = tmp_path_factory.mktemp("odd")
    out = {k: root / k for k in ("shape", "vocab", "config", "bin", "json")}
    for folder in out.values():
        shutil.copytree(dbl, folder)
    state = load_file(out["shape"] / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    state[name] = state[name][:-8].clone()
    save_file(state, str(out["shape"] / "model.safetensors"), metadata={"format": "pt"})
    tok = json.loads((out["vocab"] / "tokenizer.json").read_text())
    v = tok["model"]["vocab"]
    v["A"], v["B"] = v["B"], v["A"]
    (out["vocab"] / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((out["config"] / "config.json").read_text())
    cfg["hidden_act"] = "gelu" if cfg.get("hidden_act") != "gelu" else "relu"
    (out["config"] / "config.json").write_text(json.dumps(cfg))
    (out["bin"] / "model.safetensors").rename(out["bin"] / "pytorch_model.bin")
    (out["json"] / "config.json").write_text("{not json")
    return out


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records (and stops) any start of a Prefect server, of the flow, or load of a model."""
    import flows.local_server
    import flows.search
    from mmmo.merging import materialize

    hits: list[str] = []

    def trip(what: str) -> Callable[..., None]:
        def hit(*_a: Any, **_kw: Any) -> None:
            hits.append(what)
            raise _Reached

        return hit

    monkeypatch.setattr(flows.local_server, "start_local_server", trip("server"))
    monkeypatch.setattr(flows.search, "merge_search", trip("flow"))
    monkeypatch.setattr(materialize.Materializer, "__init__", trip("model"))
    return hits


class _Reached(Exception):
    """Raised by a tripwire."""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The case's working directory: a folder of its own inside the case's folder."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_unbroken_spec_reaches_the_flow(tmp_path: Path, workdir: Path, mmmo_cli: Any,
                                            tiny_spec: Any, write_spec: Any,
                                            tripwires: list[str]) -> None:
    """The control: the cases below differ from a spec that passes every check, which goes
    on to start the Prefect server (or, with one configured, the flow)."""
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(str(tmp_path / "studies")))
    result = mmmo_cli("run", str(spec))
    assert tripwires in (["server"], ["flow"]), result.stderr
    assert result.code == 1 and "_Reached" in result.stderr
    assert not (tmp_path / "studies").exists()  # the checks themselves wrote nothing
    assert list(workdir.iterdir()) == []


def test_the_catalogue_covers_every_class() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
        case: Case, tmp_path: Path, workdir: Path, mmmo_cli: Any, tripwires: list[str],
        monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    ctx = Ctx(tmp_path, monkeypatch, request)
    args = case.build(ctx)
    before, above = _tree(tmp_path), sorted(p.name for p in tmp_path.parent.iterdir())
    result = mmmo_cli(*args)

    assert result.code == 2, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == "", (result.stderr, result.stdout)
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line
    assert case.field in line, line
    assert "fix" in line and case.fix in line.split("fix", 1)[1], line
    assert tripwires == []  # refused before the server, the flow and any model
    assert _tree(tmp_path) == before  # nothing written: spec, storage, study, working folder
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == above  # nor next to it
