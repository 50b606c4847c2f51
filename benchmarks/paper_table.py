"""The paper's comparison (Li et al., Table 2 style), reproduced on the offline fixture family.

    python benchmarks/paper_table.py [--seeds 5] [--limit 100] [--workers 2] [--quick]

Rows: each single model (base and sources); fixed recipes at equal weights (1/n; density 0.5
where the method has one; mergekit's defaults otherwise): linear, task_arithmetic, ties,
dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties; searches at the paper's budget
(10 initial + 4 x 5 = 30 evaluations): ``cmaes`` (Evolutionary Model Merge), ``random``,
``mmmo``, its ablations (no weak-to-strong, no Fisher filter, no sparsity objective, the paper's
qEHVI instead of qLogEHVI) and plain ``qehvi`` / ``qnehvi`` / ``qnparego``.

Every search optimises the objective tasks on a fixed subsample (``--limit`` documents each,
the paper's "estimated performance"). Its pick is the trial with the best mean estimated task
score (the claim under test is about the average). Every row is then scored on the FULL
objective tasks and on the held-out tasks, which no search saw. Searched rows give the mean and
spread (sample std) over seeds. The script prints whether the ``mmmo`` pick beats every single
model and every fixed recipe on the average, and ``cmaes`` at equal budget.

Searches share a cache of merges and benchmark outcomes (same recipe -> same scores), so the
initial Sobol designs, identical across strategies of one seed, are evaluated once per seed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXED_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear",
                 "breadcrumbs", "breadcrumbs_ties")
#: (row name, strategy, settings, sparsity objective on?)
SEARCHES: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("cmaes (EMM)", "cmaes", {}, True),
    ("random (Sobol)", "random", {}, True),
    ("mmmo", "mmmo", {}, True),
    ("mmmo - weak-to-strong", "mmmo", {"weak_to_strong": False}, True),
    ("mmmo - Fisher filter", "mmmo", {"fisher_filter": False}, True),
    ("mmmo - sparsity objective", "mmmo", {}, False),
    ("mmmo, qEHVI (paper)", "mmmo", {"acquisition": "qehvi"}, True),
    ("qehvi", "qehvi", {}, True),
    ("qnehvi", "qnehvi", {}, True),
    ("qnparego", "qnparego", {}, True),
)


def _spec(args: argparse.Namespace, storage: str) -> Any:
    from mmmo.spec import load_spec

    spec = load_spec(ROOT / "examples" / "fixture.yaml")
    data = spec.model_dump(mode="json")
    for task in data["objectives"]["tasks"]:
        task["limit"] = args.limit
    data["storage"] = storage
    data["optimizer"].update(n_init=10, batch_size=5, iterations=4)
    if args.quick:
        data["optimizer"].update(n_init=4, batch_size=2, iterations=1)
    from mmmo.spec import parse_spec

    return parse_spec(data)


def _full(task: Any) -> Any:
    """The same task on every document (no subsample)."""
    return task.model_copy(update={"limit": None})


def _score(slot: Any, task: Any, cache: dict[str, Any], key: str) -> float:
    """Score (cached by ``key``) of what the slot serves now on ``task``."""
    from mmmo.evaluation import EvalFailure, evaluate_benchmark

    if key not in cache:
        model, tokenizer = slot.backend.target()
        out = evaluate_benchmark(model, tokenizer, task, batch_size=slot.spec.compute.batch_size)
        cache[key] = math.nan if isinstance(out, EvalFailure) else out.score
    return cache[key]


def _row(slot: Any, search_space: Any, tasks: list[Any], *, recipe: Any = None,
         model: str | None = None, cache: dict[str, Any]) -> dict[str, float]:
    ident = recipe.recipe_id if recipe is not None else f"model-{model}"
    scores = {}
    for task in tasks:
        key = f"full-{ident}-{task.label}"
        if key not in cache:
            if recipe is not None:
                slot.serve(recipe)
            else:
                slot.serve_model(model, f"model-{search_space.fingerprint_of(model)}")
            _score(slot, task, cache, key)
        scores[task.label] = cache[key]
    return scores


def _slug(name: str, seed: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{name} s{seed}".lower()).strip("-")


def _run_seed(job: tuple[argparse.Namespace, int, str, str]) -> dict[str, Any]:
    """Every search of one seed (sharing one cache), then each pick on the full tasks.

    Each finished search's row is kept in ``<parts>/seed<seed>/<search>.json``: a resumed run
    skips it.
    """
    args, seed, workdir, parts = job
    kept = Path(parts) / f"seed{seed}"
    kept.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    from mmmo.engine import run_inline
    from mmmo.engine.slots import Slot
    from mmmo.search import Search

    base = _spec(args, storage=str(Path(workdir) / f"seed{seed}"))
    cache: dict[str, Any] = {}
    slot = Slot(base, 0, "cpu")
    tasks = [_full(t) for t in base.objectives.tasks] + [_full(t) for t in base.heldout]
    out: dict[str, Any] = {"seed": seed, "rows": {}, "seconds": {}}
    for name, strategy, settings, sparsity in SEARCHES:
        done_file = kept / f"{_slug(name, seed)}.json"
        if done_file.exists():
            saved = json.loads(done_file.read_text())
            out["rows"][name], out["seconds"][name] = saved["row"], saved["seconds"]
            continue
        data = base.model_dump(mode="json")
        data["optimizer"].update(strategy=strategy, seed=seed, settings=settings)
        data["objectives"]["sparsity"]["enabled"] = sparsity
        data["study"] = _slug(name, seed)
        from mmmo.spec import parse_spec

        spec = parse_spec(data)
        search = Search.open(spec, preflight=False)
        started = time.perf_counter()
        run_inline(search, preflight=False)
        out["seconds"][name] = time.perf_counter() - started
        pick = _best_mean(search)
        recipe = search.space.recipe(pick.recipe)
        row = _row(slot, search.space, tasks, recipe=recipe, cache=cache)
        row["_estimated"] = statistics.fmean(pick.objectives[t.label]
                                             for t in spec.objectives.tasks)
        row["_trial"] = pick.number
        out["rows"][name] = row
        done_file.write_text(json.dumps({"row": row, "seconds": out["seconds"][name]}))
        print(f"seed {seed} {name:28s} {out['seconds'][name]:7.1f} s  pick trial "
              f"{pick.number:2d}  est {row['_estimated']:.3f}  " +
              " ".join(f"{t.label} {row[t.label]:.3f}" for t in tasks), flush=True)
    return out


def _best_mean(search: Any) -> Any:
    """The complete trial with the best mean estimated task score."""
    labels = [t.label for t in search.spec.objectives.tasks]
    complete = [t for t in search.store.trials() if t.status == "complete"]
    return max(complete, key=lambda t: (statistics.fmean(t.objectives[n] for n in labels),
                                        -t.number))


def _fixed_rows(args: argparse.Namespace, workdir: str) -> dict[str, dict[str, float]]:
    import torch

    torch.set_num_threads(args.threads)
    from mmmo.engine.slots import Slot
    from mmmo.space import SearchSpace

    spec = _spec(args, storage=str(Path(workdir) / "fixed"))
    slot = Slot(spec, 0, "cpu")
    space = SearchSpace.from_spec(spec)
    tasks = [_full(t) for t in spec.objectives.tasks] + [_full(t) for t in spec.heldout]
    cache: dict[str, Any] = {}
    rows: dict[str, dict[str, float]] = {}
    for label in [spec.base.label, *(s.label for s in spec.sources)]:
        rows[label] = _row(slot, space, tasks, model=label, cache=cache)
        print(f"single {label:24s} " + " ".join(f"{k} {v:.3f}" for k, v in rows[label].items()),
              flush=True)
    for method in FIXED_METHODS:
        recipe = space.fixed_recipe(method=method, normalize=None)
        rows[f"{method} (1/n, d=0.5)"] = _row(slot, space, tasks, recipe=recipe, cache=cache)
        print(f"fixed  {method:24s} " + " ".join(
            f"{k} {v:.3f}" for k, v in rows[f'{method} (1/n, d=0.5)'].items()), flush=True)
    return rows


def _table(fixed: dict[str, dict[str, float]], seeds: list[dict[str, Any]],
           columns: list[str], objectives: list[str]) -> tuple[str, dict[str, Any]]:
    heldout = [c for c in columns if c not in objectives]

    def averages(row: dict[str, float]) -> dict[str, float]:
        row = dict(row)
        row["avg obj"] = statistics.fmean(row[c] for c in objectives)
        row["avg held-out"] = statistics.fmean(row[c] for c in heldout) if heldout else math.nan
        row["avg all"] = statistics.fmean(row[c] for c in columns)
        return row

    cols = [*columns, "avg obj", "avg held-out", "avg all"]
    summary: dict[str, Any] = {}
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in fixed.items():
        r = averages(row)
        summary[name] = {c: (r[c], 0.0) for c in cols}
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[c]:.1f}" for c in cols) + " |")
    for name, *_ in SEARCHES:
        per_seed = [averages(s["rows"][name]) for s in seeds if name in s["rows"]]
        if not per_seed:
            lines.append(f"| {name} | " + " | ".join("not run" for _ in cols) + " |")
            continue
        label = name if len(per_seed) == len(seeds) else \
            f"{name} ({len(per_seed)} of {len(seeds)} seeds)"
        stats = {c: (statistics.fmean(r[c] for r in per_seed),
                     statistics.stdev(r[c] for r in per_seed) if len(per_seed) > 1 else 0.0)
                 for c in cols}
        summary[name] = stats
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * m:.1f} ± {100 * sd:.1f}" for m, sd in (stats[c] for c in cols)) + " |")
    return "\n".join(lines), summary


def _claims(summary: dict[str, Any], singles: list[str]) -> list[str]:
    if "mmmo" not in summary:
        return ["mmmo was not run: no claim to check"]
    out = []
    for column, what in (("avg all", "all tasks"), ("avg held-out", "the held-out tasks")):
        mm = summary["mmmo"][column][0]
        for name, stats in summary.items():
            if name == "mmmo" or name.startswith(("mmmo ", "mmmo,", "mmmo -")) or \
                    name in ("random (Sobol)", "qehvi", "qnehvi", "qnparego"):
                continue
            verdict = "beats" if mm > stats[column][0] else "does NOT beat"
            kind = "single model" if name in singles else "search" if "cmaes" in name else \
                "fixed recipe"
            out.append(f"mmmo pick ({100 * mm:.1f}) {verdict} {kind} {name} "
                       f"({100 * stats[column][0]:.1f}) on the average over {what}")
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=100,
                        help="documents per objective task during the search (estimate)")
    parser.add_argument("--workers", type=int, default=2, help="processes (one seed each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--out", default=str(ROOT / ".cache" / "paper_table.json"))
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: print the table of the searches finished so far")
    args = parser.parse_args(argv)
    os.environ.setdefault("MMMO_CACHE_DIR", str(ROOT / ".cache"))
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars, in every worker
    from mmmo.fixtures import ensure_family

    ensure_family()
    started = time.perf_counter()
    # Finished seeds (and the fixed rows) are kept beside --out, so an interrupted run resumes.
    parts = Path(args.out).with_suffix("")
    parts = parts.parent / f"{parts.name}.parts-limit{args.limit}{'-quick' if args.quick else ''}"
    parts.mkdir(parents=True, exist_ok=True)
    done = {s: json.loads((parts / f"seed{s}.json").read_text()) for s in range(args.seeds)
            if (parts / f"seed{s}.json").exists()}
    if done:
        print(f"resuming: seeds {sorted(done)} already done ({parts})", flush=True)
    if args.report_only:
        for seed in range(args.seeds):
            folder = parts / f"seed{seed}"
            if seed in done or not folder.is_dir():
                continue
            rows, seconds = {}, {}
            for name, *_ in SEARCHES:
                f = folder / f"{_slug(name, seed)}.json"
                if f.exists():
                    saved = json.loads(f.read_text())
                    rows[name], seconds[name] = saved["row"], saved["seconds"]
            if rows:
                done[seed] = {"seed": seed, "rows": rows, "seconds": seconds}
        args.workers = 0
    with tempfile.TemporaryDirectory(prefix="paper-table-") as workdir:
        jobs = [(args, seed, workdir, str(parts)) for seed in range(args.seeds)
                if seed not in done and not args.report_only]
        ctx = mp.get_context("spawn")
        with ctx.Pool(max(1, min(args.workers, len(jobs) or 1))) as pool:
            def keep(result: dict[str, Any]) -> None:
                (parts / f"seed{result['seed']}.json").write_text(json.dumps(result))

            pending = [pool.apply_async(_run_seed, (job,), callback=keep) for job in jobs]
            fixed_file = parts / "fixed.json"
            if fixed_file.exists():
                fixed = json.loads(fixed_file.read_text())
            else:
                fixed = _fixed_rows(args, workdir)
                fixed_file.write_text(json.dumps(fixed))
            for job, result in zip(jobs, pending, strict=True):
                done[job[1]] = result.get()
    seeds = [done[s] for s in sorted(done)]
    spec = _spec(args, storage="/tmp/unused")
    objectives = [t.label for t in spec.objectives.tasks]
    columns = objectives + [t.label for t in spec.heldout]
    table, summary = _table(fixed, seeds, columns, objectives)
    budget = spec.optimizer.budget
    print(f"\n## Paper-style table on the fixture family ({args.seeds} seeds, {budget} "
          f"evaluations per search, objectives estimated on {args.limit} documents; scores "
          f"in % on the full tasks; searched rows: mean ± std over seeds)\n")
    print(table)
    print()
    singles = [spec.base.label, *(s.label for s in spec.sources)]
    for line in _claims(summary, singles):
        print("-", line)
    secs = {name: statistics.fmean(s["seconds"][name] for s in seeds if name in s["seconds"])
            for name, *_ in SEARCHES if any(name in s["seconds"] for s in seeds)}
    print("\nmean seconds per search (shared cache; 2 CPU cores): " +
          ", ".join(f"{k} {v:.0f}" for k, v in secs.items()))
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"fixed": fixed, "seeds": seeds, "summary": summary},
                                         indent=1))


if __name__ == "__main__":
    main()
