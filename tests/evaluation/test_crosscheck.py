"""Cross-check: our in-memory path scores a recipe as ``lm_eval --model hf`` scores its export.

The recipe is merged in memory by hand (task arithmetic, weight 0.5 per source, written in place
into a resident copy of the base), exported with ``save_pretrained``, and scored both ways on
the same documents (``--samples`` gets our seeded subsample) for one loglikelihood task and one
generate_until task: scores, standard errors and every document's response must agree. The
project's fixture family is used when its weights are shipped, else the stand-in family.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmmo.evaluation import BenchmarkResult, TaskRegistry, evaluate_benchmark, select_docs
from mmmo.spec import TaskSpec


def merge_in_place(resident, sources, weight: float = 0.5) -> None:
    """``resident = base + weight * sum(source - base)``, written into ``resident``."""
    with torch.no_grad():
        base = {k: v.clone() for k, v in resident.state_dict().items()}
        for name, tensor in resident.state_dict().items():
            delta = sum(s.state_dict()[name] - base[name] for s in sources)
            tensor.copy_(base[name] + weight * delta)


def start_cli(folder: Path, include: Path, samples: dict[str, list[int]], out: Path,
              batch_size: int) -> subprocess.Popen:
    """``lm_eval --model hf`` on an exported folder, started in the background."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={folder},dtype=float32", "--tasks", ",".join(samples),
           "--include_path", str(include), "--samples", json.dumps(samples),
           "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(out),
           "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def finish_cli(proc: subprocess.Popen, out: Path) -> tuple[dict, dict[str, dict[int, dict]]]:
    """The CLI's results JSON and its logged samples (task -> doc id -> sample)."""
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    found = sorted(out.rglob("results_*.json"))
    assert found, stderr[-3000:]
    samples: dict[str, dict[int, dict]] = {}
    for path in out.rglob("samples_*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            task = path.name[len("samples_"):].rsplit("_", 1)[0]
            samples.setdefault(task, {})[row["doc_id"]] = row
    return json.loads(found[-1].read_text()), samples


@pytest.mark.slow
def test_in_memory_scores_equal_lm_eval_cli(family, helpers, tmp_path):
    fixture = helpers.fixture_family()
    if fixture is not None:
        base_dir, source_dirs = fixture.base, list(fixture.sources.values())
        skill = next(iter(fixture.objective_tasks))
        mc_yaml, gen_yaml = fixture.objective_tasks[skill], fixture.extra_tasks["gen"]
        include = fixture.tasks_dir
    else:
        base_dir, source_dirs = family.base, list(family.sources.values())
        mc_yaml, gen_yaml = family.tasks["mc"], family.tasks["gen"]
        include = mc_yaml.parent
    resident, tok = helpers.load(base_dir)
    merge_in_place(resident, [helpers.load(d)[0] for d in source_dirs])
    export = tmp_path / "export"
    resident.save_pretrained(export)
    tok.save_pretrained(export)

    specs = [TaskSpec(task=str(mc_yaml), limit=16, sample_seed=11),
             TaskSpec(task=str(gen_yaml), metric="exact_match", limit=12, sample_seed=11)]
    registry = TaskRegistry()
    samples = {}
    for spec in specs:  # the subsample our path will use, known before evaluating
        with registry.checkout(spec) as loaded:
            for name, n in loaded.n_docs.items():
                samples[name] = select_docs(n, spec.limit, spec.sample_seed)
    cli = start_cli(export, include, samples, tmp_path / "cli", batch_size=8)  # runs meanwhile
    try:
        ours = [evaluate_benchmark(resident, tok, spec, batch_size=8, registry=registry,
                                   log_samples=True) for spec in specs]
    finally:
        theirs_all, their_samples = finish_cli(cli, tmp_path / "cli")
    assert all(isinstance(r, BenchmarkResult) for r in ours), ours
    assert [r.doc_indices for r in ours] == [{k: v} for k, v in samples.items()]

    for result, name in zip(ours, samples, strict=True):
        theirs = theirs_all["results"][name]
        key = f"{result.metric},{result.filter}"
        assert theirs_all["n-samples"][name]["effective"] == result.n_docs
        assert result.score == pytest.approx(theirs[key], abs=1e-6), (name, result.score, theirs)
        assert result.stderr == pytest.approx(theirs[f"{result.metric}_stderr,{result.filter}"],
                                               abs=1e-6)
        mine = {row["doc_id"]: row for row in result.raw["samples"][name]}
        assert sorted(mine) == sorted(their_samples[name]) == samples[name]
        for doc_id, row in mine.items():
            other = their_samples[name][doc_id]
            assert row[result.metric] == other[result.metric], (name, doc_id)
            if result.metric == "exact_match":  # generate_until: the very same text
                assert row["filtered_resps"] == other["filtered_resps"], (name, doc_id)
            else:  # loglikelihoods of every choice
                got = [ll for ll, _ in row["filtered_resps"]]
                want = [float(ll) for ll, _ in other["filtered_resps"]]
                assert got == pytest.approx(want, abs=1e-4), (name, doc_id)
    gen_name = list(samples)[1]
    generated = [row["filtered_resps"][0] for row in ours[1].raw["samples"][gen_name]]
    assert any(generated), "every response is empty: the generate_until check is too weak"
