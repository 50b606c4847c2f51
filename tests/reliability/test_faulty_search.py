"""One small search through the CLI on S3, with injected evaluation faults and secret credentials.

The search (in-process ``mmmo run``, Prefect's test harness, moto's S3 server) is shared by:

- the fault injector (``MMMO_FAULTS``): about 30 % of benchmark attempts fail (exception,
  time-out, NaN); the search still spends its whole budget; a failure that a retry fixes is a
  success; an exhausted one is a failed trial carrying its error; no failed recipe is proposed
  again (and, shown by a counterfactual, the optimizer would have proposed one had it forgotten
  the failures);
- secrets: the AWS credentials it ran with appear in no log, Prefect record (logs, artifacts,
  blocks, runs), study file, report, trial record or export;
- trust: ``trust_remote_code`` is off unless the spec turns it on, and the export says which.

The search space is tiny on purpose (3 weights in {0, 1}: 8 recipes), so that proposals collide
and only de-duplication against every told trial, failed ones included, keeps them new.
"""

from __future__ import annotations

import asyncio
import io
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmmo.hooks import FaultPlan, fault_plan

KEY_ID = "AKIAMMMOLEAKPROBE7F3A"
SECRET = "mmmo+Leak/Probe=Qx81zKp0vR"
FAULTS = "raise=0.15,timeout=0.1,nan=0.05,seed={seed}"  # 30 % of attempts fail
N_INIT, BATCH = 3, 2
OBJECTIVES = ("dbl", "rev")
RETRIES = 1


def _spec_changes() -> dict[str, Any]:
    return {"name": "faulty",
            "merge": {"method": "dare_ties", "normalize": False, "rounding": 0,
                      "parameters": {"weight": [0.0, 1.0], "density": 0.5}},
            "optimizer": {"strategy": "random", "n_init": N_INIT, "batch_size": BATCH,
                          "iterations": 1, "seed": 0},
            "evaluation": {"retries": RETRIES, "retry_delay_seconds": 0}}


# ------------------------------------------------------------------ what the faults should do


def expected_outcome(plan: FaultPlan, recipe_id: str, task: str) -> tuple[str, list[str | None]]:
    """The outcome the injector dictates ("ok", "nan", "exception", "timeout") and its draws."""
    draws: list[str | None] = []
    for attempt in range(RETRIES + 1):
        kind = plan.draw(recipe_id, task, attempt)
        draws.append(kind)
        if kind is None:
            return "ok", draws
        if kind == "nan":  # a NaN score is the recipe's outcome: not retried
            return "nan", draws
    return {"raise": "exception"}.get(draws[-1], draws[-1]), draws  # type: ignore[arg-type]


def _planned(spec_path: Path) -> tuple[Any, list[str], list[str], Any]:
    """The recipes ``random`` proposes (they do not depend on the scores), as the search will."""
    from mmmo.search import Search
    from mmmo.space import SearchSpace
    from mmmo.spec import load_spec

    spec = load_spec(spec_path)
    search = Search(spec, store=None, space=SearchSpace.from_spec(spec))
    X0 = search.new_optimizer().ask(N_INIT)
    opt = search.new_optimizer()
    opt.tell(X0, np.full((N_INIT, len(search.names)), np.nan))
    X1 = opt.ask(BATCH)
    ids = [[search.space.decode(x).recipe_id for x in X] for X in (X0, X1)]
    return search, ids[0], ids[1], X0


def _forgetful_proposals(search: Any, X0: np.ndarray, complete: list[bool]) -> list[str]:
    """Iteration 1's recipes had the optimizer been told only the complete trials."""
    opt = search.new_optimizer()
    keep = np.array(complete)
    if keep.any():
        opt.tell(X0[keep], np.zeros((int(keep.sum()), len(search.names))))
    return [search.space.decode(x).recipe_id for x in opt.ask(BATCH)]


def _choose_seed(spec_path: Path) -> tuple[int, dict[str, Any]]:
    """A fault seed under which this search shows every behaviour the tests check."""
    search, ids0, ids1, X0 = _planned(spec_path)
    for seed in range(2000):
        plan = FaultPlan(raise_=0.15, timeout=0.1, nan=0.05, seed=seed)
        outcome = {(r, t): expected_outcome(plan, r, t) for r in ids0 + ids1 for t in OBJECTIVES}
        kinds = [o for o, _ in outcome.values()]
        retried_ok = [k for k, (o, d) in outcome.items() if o == "ok" and d[0] is not None]
        complete0 = [all(outcome[r, t][0] == "ok" for t in OBJECTIVES) for r in ids0]
        failed0 = {r for r, ok in zip(ids0, complete0, strict=True) if not ok}
        if not (retried_ok and "nan" in kinds and {"exception", "timeout"} & set(kinds)
                and any(complete0) and failed0):
            continue
        if failed0 & set(_forgetful_proposals(search, X0, complete0)):
            return seed, {"ids0": ids0, "ids1": ids1, "failed0": failed0}
    raise AssertionError("no fault seed shows every behaviour; widen the search")


# ------------------------------------------------------------------ the shared search


@pytest.fixture(scope="module")
def faulty(prefect_harness: None, s3_endpoint: str, tiny_spec: Any, write_spec: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the search once; yield what the tests inspect."""
    import s3fs

    from flows import cli

    root = tmp_path_factory.mktemp("faulty")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        mp.setenv("TQDM_DISABLE", "1")
        mp.setenv("COLUMNS", "250")
        s3fs.S3FileSystem.clear_instance_cache()  # new filesystems, with these credentials
        bucket = "mmmo-faulty"
        s3fs.S3FileSystem().mkdir(bucket)
        storage = f"s3://{bucket}/studies"
        spec = write_spec(root / "faulty.yaml", tiny_spec(storage, **_spec_changes()))
        seed, planned = _choose_seed(spec)
        mp.setenv("MMMO_FAULTS", FAULTS.format(seed=seed))
        mp.setattr(sys, "argv", ["mmmo", "run", str(spec), "--study", "faulty"])
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code
        from mmmo.study import StudyStore

        yield {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "root": root,
               "store": StudyStore(storage, "faulty"), "bucket": bucket,
               "plan": fault_plan(), "planned": planned, "spec": spec}
    s3fs.S3FileSystem.clear_instance_cache()


def test_the_search_spends_its_budget_despite_the_faults(faulty: dict[str, Any]) -> None:
    assert faulty["code"] == 0, faulty["stderr"][-3000:]
    assert "done: pick = trial" in faulty["stdout"]
    store = faulty["store"]
    trials = store.trials()
    assert [t.number for t in trials] == list(range(N_INIT + BATCH))
    assert [t.iteration for t in trials] == [0] * N_INIT + [1] * BATCH
    assert [t.recipe_id for t in trials] == faulty["planned"]["ids0"] + faulty["planned"]["ids1"]
    pick = store.read_json("final.json")["pick"]
    assert next(t for t in trials if t.number == pick["number"]).status == "complete"


def test_each_benchmark_ends_as_its_injected_faults_dictate(faulty: dict[str, Any]) -> None:
    plan: FaultPlan = faulty["plan"]
    seen: dict[str, int] = {"retried then ok": 0, "exhausted": 0, "nan": 0}
    attempts = failed_attempts = 0
    for trial in faulty["store"].trials():
        outcomes = {t: expected_outcome(plan, trial.recipe_id, t) for t in OBJECTIVES}
        for task, (expected, draws) in outcomes.items():
            attempts += len(draws)
            failed_attempts += sum(d is not None for d in draws)
            got = trial.benchmarks[task]
            if expected == "ok":
                assert got["status"] == "ok", (trial.number, task, draws, got)
                assert trial.objectives[task] is not None
                seen["retried then ok"] += draws[0] is not None
            else:
                assert got["status"] == "failed" and got["kind"] == expected, \
                    (trial.number, task, draws, got)
                assert f"injected by MMMO_FAULTS (attempt {len(draws) - 1})" in got["message"]
                assert trial.objectives[task] is None
                seen["exhausted" if expected != "nan" else "nan"] += 1
        should_fail = any(o != "ok" for o, _ in outcomes.values())
        assert trial.status == ("failed" if should_fail else "complete"), trial.number
        if should_fail:  # the failed trial carries its typed error, the optimizer a NaN
            assert trial.error and "injected by MMMO_FAULTS" in trial.error["message"]
            assert trial.error["kind"] in ("exception", "timeout", "nan")
            assert None in trial.values
    assert all(seen.values()), seen
    print(f"{failed_attempts}/{attempts} benchmark attempts failed by injection; {seen}")
    assert 0.15 <= failed_attempts / attempts <= 0.6


def test_no_failed_recipe_is_proposed_again(faulty: dict[str, Any]) -> None:
    store = faulty["store"]
    proposed = [t.recipe_id for p in store.proposals() for t in p.trials]
    assert len(proposed) == len(set(proposed)) == N_INIT + BATCH
    failed0 = {t.recipe_id for t in store.trials() if t.iteration == 0 and t.status == "failed"}
    assert failed0 == faulty["planned"]["failed0"]
    later = {t.recipe_id for p in store.proposals() if p.iteration > 0 for t in p.trials}
    assert not failed0 & later
    state = store.read_json("optimizer.json")  # every trial was told, failed ones as NaN
    assert len(state["X"]) == N_INIT + BATCH
    assert sum(any(v is None for v in row) for row in state["Y"]) == \
        sum(t.status == "failed" for t in store.trials())


# ------------------------------------------------------------------ secrets


def _leaks(blobs: dict[str, bytes]) -> list[str]:
    needles = {KEY_ID, SECRET, urllib.parse.quote(SECRET, safe=""), urllib.parse.quote(SECRET)}
    return sorted(name for name, blob in blobs.items()
                  for n in needles if n.encode() in blob)


async def _prefect_records() -> dict[str, bytes]:
    """Every log, artifact, block document, flow run and task run the Prefect API holds."""
    from prefect.client.orchestration import get_client

    out: dict[str, bytes] = {}
    async with get_client() as client:
        for what, read in (("log", client.read_logs), ("artifact", client.read_artifacts),
                           ("flow-run", client.read_flow_runs),
                           ("task-run", client.read_task_runs)):
            offset = 0
            while True:
                page = await read(limit=200, offset=offset)
                for item in page:
                    out[f"{what}:{item.id}"] = item.model_dump_json().encode()
                if len(page) < 200:
                    break
                offset += 200
        for doc in await client.read_block_documents(include_secrets=True):
            out[f"block:{doc.name}"] = doc.model_dump_json(
                context={"include_secrets": True}).encode()
    return out


def test_credentials_appear_nowhere(faulty: dict[str, Any]) -> None:
    import s3fs

    assert _leaks({"control": f"x{SECRET}y".encode()}) == ["control"]  # the probe finds them
    fs = s3fs.S3FileSystem()
    keys = fs.find(faulty["bucket"])
    blobs = {f"s3://{k}": fs.cat_file(k) for k in keys}
    names = "\n".join(keys)
    for part in ("spec.yaml", "trials/0000.json", "proposals/0001.json", "final.json",
                 "optimizer.json", "reports/report.html", "reports/report.md",
                 "mergekit.yaml", "export.json", "model.safetensors", ".outcomes/bench-"):
        assert part in names, part  # everything the search wrote is scanned
    log = Path(faulty["stderr"].split("log: ", 1)[1].split()[0])
    blobs[str(log)] = log.read_bytes()
    assert b" prefect.flow_runs " in blobs[str(log)]  # the log file got Prefect's logs
    blobs["cli stdout"] = faulty["stdout"].encode()
    blobs["cli stderr"] = faulty["stderr"].encode()
    blobs.update({str(p): p.read_bytes() for p in faulty["root"].rglob("*") if p.is_file()})
    records = asyncio.run(_prefect_records())
    for kind in ("log:", "artifact:", "flow-run:", "task-run:"):  # (and any block documents)
        assert any(k.startswith(kind) for k in records), kind
    blobs.update(records)
    assert _leaks(blobs) == []


# ------------------------------------------------------------------ trust_remote_code


def test_trust_remote_code_is_off_unless_the_spec_turns_it_on(
        faulty: dict[str, Any], tiny_spec: Any, tmp_path: Path) -> None:
    from mmmo.merging import Materializer
    from mmmo.merging.export import export, read_export
    from mmmo.space import SearchSpace
    from mmmo.spec import parse_spec

    store = faulty["store"]
    assert store.load_spec().compute.trust_remote_code is False
    exported = read_export(store.read_json("final.json")["export"])
    assert exported is not None and exported.trust_remote_code is False
    assert '"trust_remote_code": false' in store.fs.cat_file(
        f"{store.path('exports')}/{exported.recipe_id}/export.json").decode()

    trusting = parse_spec(tiny_spec(str(tmp_path), compute={"device": "cpu",
                                                            "trust_remote_code": True}))
    mat = Materializer.from_spec(trusting)
    assert mat.trust_remote_code is True
    space = SearchSpace.from_spec(trusting)
    info = export(space.decode(np.full(space.dim, 0.5)), tmp_path / "out", materializer=mat)
    assert info.trust_remote_code is True
    assert read_export(tmp_path / "out").trust_remote_code is True
