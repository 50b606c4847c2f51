"""The paper's comparison (Li et al., Table 2 style) with confirmed scores and paired tests.

    python benchmarks/paper_table.py [--spec examples/layered.yaml] [--seeds 5]
        [--budgets 30 60] [--workers 2] [--only mmmo,qehvi] [--quick] [--report-only]

Rows: every single model of the family (base and sources); the untuned recipes (linear,
task_arithmetic, ties, dare_ties, breadcrumbs at mergekit-style defaults: weight 1/n, density
0.5 where the method has one); and searches: ``mmmo`` and each ablation (no weak-to-strong, no
Fisher filter, no sparsity objective, the paper's qEHVI), ``qehvi``, ``qnehvi``, ``qnparego``,
``random`` (Sobol), ``cmaes`` (Evolutionary Model Merge). Each search runs once per seed to the
largest budget (10 initial + batches of 5, the paper's schedule); the pick at a smaller budget
is the spec's pick policy over its first trials (a batch search's first 30 trials are the
30-evaluation search). Every pick, untuned recipe and single model is then scored on documents
no search used: the rest of each objective task's seeded ranking (``confirm``, up to
``--confirm`` documents) and the held-out tasks.

The statistics are paired across seeds: for mmmo against each other search, and against the
best untuned recipe, the mean difference of the confirmed average over the objective tasks,
a 95% bootstrap confidence interval of it (10,000 resamples of the seeds) and the Wilcoxon
signed-rank test's two-sided p (scipy; with 5 seeds its smallest possible p is 0.0625, so a
difference is called significant when the bootstrap interval excludes 0). Each finished search
is kept (``--workdir``): an interrupted run resumes search by search.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stats import bootstrap_ci, wilcoxon_p  # noqa: E402

UNTUNED = ("linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs")
#: (row name, strategy, settings, sparsity objective on?)
SEARCHES: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("mmmo", "mmmo", {}, True),
    ("mmmo - weak-to-strong", "mmmo", {"weak_to_strong": False}, True),
    ("mmmo - Fisher filter", "mmmo", {"fisher_filter": False}, True),
    ("mmmo - sparsity objective", "mmmo", {}, False),
    ("mmmo, qEHVI (paper)", "mmmo", {"acquisition": "qehvi"}, True),
    ("qehvi", "qehvi", {}, True),
    ("qnehvi", "qnehvi", {}, True),
    ("qnparego", "qnparego", {}, True),
    ("random (Sobol)", "random", {}, True),
    ("cmaes (EMM)", "cmaes", {}, True),
)


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _base(args: argparse.Namespace) -> dict[str, Any]:
    from mmmo.spec import load_spec

    data = load_spec(ROOT / args.spec).model_dump(mode="json")
    budget = max(args.budgets)
    data["optimizer"].update(n_init=10, batch_size=5, iterations=(budget - 10) // 5,
                             schedule="batch")
    if args.quick:
        data["optimizer"].update(n_init=4, batch_size=2, iterations=4)
        for task in data["objectives"]["tasks"]:
            task["limit"] = min(task["limit"] or 40, 40)
    data["baselines"] = []
    data["compute"]["device"] = "cpu"
    data["confirm"] = {"max_documents": args.confirm, "top_k": 0}
    data["storage"] = str(Path(args.workdir) / "studies")
    return data


def _search_job(job: tuple[argparse.Namespace, int, str]) -> dict[str, Any]:
    """One search of one seed, then its picks at each budget scored on unseen documents."""
    args, seed, name = job
    keep = Path(args.workdir) / "rows" / f"{_slug(name)}-s{seed}.json"
    if keep.exists():
        return json.loads(keep.read_text())
    import torch

    torch.set_num_threads(args.threads)
    from mmmo.engine import run
    from mmmo.engine.slots import find_session
    from mmmo.spec import parse_spec

    _, strategy, settings, sparsity = next(s for s in SEARCHES if s[0] == name)
    data = _base(args)
    data["optimizer"].update(strategy=strategy, seed=seed, settings=settings)
    data["objectives"]["sparsity"]["enabled"] = sparsity
    data["study"] = f"{_slug(name)}-s{seed}"[:63]
    spec = parse_spec(data)
    started = time.perf_counter()
    run(spec, inline=True, finish=False, preflight=False)
    seconds = time.perf_counter() - started
    search = find_session(f"{spec.storage}/{spec.study_name}").search
    trials = search.store.trials()
    out: dict[str, Any] = {"name": name, "seed": seed, "seconds": seconds, "picks": {}}
    for budget in sorted(args.budgets):
        first = [t for t in trials if t.number < budget]
        pick = search.rank(first)[0]
        out["picks"][str(budget)] = {"number": pick.number,
                                     "scores": _confirmed(search, pick.recipe, None)}
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(json.dumps(out))
    print(f"seed {seed} {name:26s} {seconds:7.1f} s  " + "  ".join(
        f"@{b}: trial {p['number']} {_avg(p['scores'], search.task_objectives):.3f}"
        for b, p in out["picks"].items()), flush=True)
    return out


def _confirmed(search: Any, recipe: dict[str, Any] | None, model: str | None
               ) -> dict[str, float | None]:
    """Scores of a recipe (or a single model) on the final table's documents."""
    from mmmo.engine.steps import cell_step

    url = search.store.url
    out = {}
    for name in search.final_columns():
        cell = {"row": "x", "recipe": recipe, "model": model, "task": name,
                "docs": search.final_docs(name).model_dump(mode="json")}
        res = cell_step(url, cell, 0)
        out[name] = res.get("score") if res.get("status") == "ok" else None
    return out


def _avg(scores: dict[str, float | None], names: list[str]) -> float:
    vals = [scores[n] for n in names if scores.get(n) is not None]
    return statistics.fmean(vals) if len(vals) == len(names) else float("nan")


def _fixed_rows(args: argparse.Namespace) -> dict[str, dict[str, float | None]]:
    keep = Path(args.workdir) / "rows" / "fixed.json"
    if keep.exists():
        return json.loads(keep.read_text())
    from mmmo.engine.slots import open_session
    from mmmo.spec import parse_spec

    data = _base(args)
    data["study"] = "fixed"
    data["optimizer"].update(strategy="random")
    sess = open_session(parse_spec(data))
    search = sess.search
    rows: dict[str, dict[str, float | None]] = {}
    for label in search.reference_labels():
        rows[label] = _confirmed(search, None, label)
    for method in UNTUNED:
        from mmmo.final_table import recipe_json

        recipe = search.space.fixed_recipe(method=method, normalize=None)
        rows[f"{method} (untuned)"] = _confirmed(search, recipe_json(recipe), None)
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(json.dumps(rows))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run (or resume) the comparison and print the tables and the paired tests."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="examples/layered.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--confirm", type=int, default=200,
                        help="confirmation documents per objective task")
    parser.add_argument("--workers", type=int, default=2, help="processes (one search each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--only", default="", help="comma-separated search rows to run")
    parser.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    tag = f"{Path(args.spec).stem}{'-quick' if args.quick else ''}"
    args.workdir = args.workdir or str(ROOT / ".cache" / f"paper-table-{tag}")
    if args.quick:
        args.budgets = [8, 12]
    os.environ.setdefault("MMMO_CACHE_DIR", str(ROOT / ".cache"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} cores); {args.spec}, {args.seeds} seeds, budgets {args.budgets}",
          flush=True)
    names = [s[0] for s in SEARCHES if not args.only or s[0] in args.only.split(",")]
    jobs = [(args, seed, name) for seed in range(args.seeds) for name in names]
    started = time.perf_counter()
    fixed = _fixed_rows(args) if not args.report_only else json.loads(
        (Path(args.workdir) / "rows" / "fixed.json").read_text())
    if args.report_only:
        results = [json.loads(p.read_text()) for p in (Path(args.workdir) / "rows").glob("*-s*.json")]
    else:
        with mp.get_context("spawn").Pool(max(1, args.workers)) as pool:
            results = pool.map(_search_job, jobs, chunksize=1)
    _report(args, fixed, results, names)
    print(f"total wall time {time.perf_counter() - started:.0f} s")


def _report(args: argparse.Namespace, fixed: dict[str, Any], results: list[dict[str, Any]],
            names: list[str]) -> None:
    from mmmo.spec import parse_spec

    spec = parse_spec({**_base(args), "study": "report"})
    objectives = [t.label for t in spec.objectives.tasks]
    heldout = [t.label for t in spec.heldout]
    cols = [*objectives, *heldout]
    header = "| row | " + " | ".join(cols) + " | avg objectives | avg held-out |"
    rule = "|---|" + "---:|" * (len(cols) + 2)
    for budget in sorted(args.budgets):
        print(f"\n## {budget} evaluations ({args.seeds} seeds; confirmed scores in %: "
              "documents no search used; searches: mean ± std over seeds)\n")
        print(header)
        print(rule)
        for row, scores in fixed.items():
            print(f"| {row} | " + " | ".join(_pct(scores.get(c)) for c in cols) +
                  f" | {_pct(_avg(scores, objectives))} | {_pct(_avg(scores, heldout))} |")
        for name in names:
            per = [r["picks"][str(budget)]["scores"] for r in results if r["name"] == name]
            if not per:
                continue
            cells = [_ms([p.get(c) for p in per]) for c in cols]
            print(f"| {name} ({len(per)}) | " + " | ".join(cells) + " | " +
                  _ms([_avg(p, objectives) for p in per]) + " | " +
                  _ms([_avg(p, heldout) for p in per]) + " |")
        _paired(results, fixed, names, budget, objectives)


def _paired(results: list[dict[str, Any]], fixed: dict[str, Any], names: list[str],
            budget: int, objectives: list[str]) -> None:
    def by_seed(name: str) -> dict[int, float]:
        return {r["seed"]: _avg(r["picks"][str(budget)]["scores"], objectives)
                for r in results if r["name"] == name}

    mm = by_seed("mmmo")
    if not mm:
        return
    print(f"\nPaired comparisons at {budget} evaluations (mmmo minus the row, confirmed "
          "average over the objective tasks, in points):\n")
    print("| vs | mean diff | 95% bootstrap CI | Wilcoxon p | verdict |")
    print("|---|---:|---|---:|---|")
    untuned = {k: _avg(v, objectives) for k, v in fixed.items() if "untuned" in k}
    best_untuned = max(untuned, key=untuned.get) if untuned else None
    rows = [(n, by_seed(n)) for n in names if n != "mmmo"]
    if best_untuned:
        rows.append((f"{best_untuned} (best untuned)",
                     {s: untuned[best_untuned] for s in mm}))
    for other, theirs in rows:
        seeds = sorted(set(mm) & set(theirs))
        if len(seeds) < 2:
            continue
        diffs = [100 * (mm[s] - theirs[s]) for s in seeds]
        lo, hi = bootstrap_ci(diffs)
        p = wilcoxon_p(diffs)
        verdict = ("mmmo better" if lo > 0 else "mmmo worse" if hi < 0 else
                   "not significant")
        print(f"| {other} | {statistics.fmean(diffs):+.1f} | [{lo:+.1f}, {hi:+.1f}] | "
              f"{p:.3f} | {verdict} |")


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def _ms(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.fmean(vals):.1f} ± {100 * sd:.1f}"


if __name__ == "__main__":
    main()
