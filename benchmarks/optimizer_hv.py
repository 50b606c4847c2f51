r"""Normalised hypervolume of every optimization strategy on BoTorch's multi-objective test problems.

Each run: ``n_init`` initial points (one ``ask``), then batches of ``batch`` until the largest
budget; every objective is maximised (the problems are negated). A run's first ``b`` evaluations
are exactly what a run with budget ``b`` would evaluate (an ask depends only on the seed and the
told data), so one run to the largest budget gives the hypervolume at every smaller budget.

Normalised HV = HV(evaluated points, problem.ref_point) / problem.max_hv (BoTorch's true
maximum: analytic for DTLZ2, reference values for BraninCurrin and ZDT3).

Seconds per ask: wall-clock and CPU time of the model-based asks (the initial design is free).
For DTLZ2 (6 dims, 3 objectives: the paper's shape) each run also times one ``ask(batch)`` at
the largest budget (60 told points) without telling it.

A strategy is a name, optionally with settings as JSON and/or ``@COMMIT`` to run the code of an
earlier commit (``benchmarks/baseline_tree.py``), so that old and new code, or two settings, are
compared side by side in one run::

    --strategies mmmo mmmo@a290d2d 'mmmo{"mc_samples": 32}'

Usage::

    TORCH_EXTENSIONS_DIR=.cache/torch_extensions nice .venv/bin/python benchmarks/optimizer_hv.py \
        --seeds 5 --budgets 30 60 --workers 2 --results .cache/optimizer_hv.json

Runs are cached in the ``--results`` JSON file, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROBLEMS = {
    "BraninCurrin(2,2)": ("BraninCurrin", {}),
    "DTLZ2(6,3)": ("DTLZ2", {"dim": 6, "num_objectives": 3}),
    "ZDT3(6,2) disconnected": ("ZDT3", {"dim": 6}),
    "VehicleSafety(5,3)": ("VehicleSafety", {}),
    "Penicillin(7,3)": ("Penicillin", {}),
    "CarSideImpact(7,4)": ("CarSideImpact", {}),
    "EmbeddedDTLZ2(30,5)": ("synthetic.EmbeddedDTLZ2", {}),
    "LayeredMerge(30,5)": ("synthetic.LayeredMerge", {}),
}
DEFAULT_PROBLEMS = ["BraninCurrin(2,2)", "DTLZ2(6,3)", "ZDT3(6,2) disconnected"]
STRATEGIES = ["mmmo", "qehvi", "qnehvi", "qnparego", "cmaes", "random"]
TEXTBOOK = ["textbook-qlognehvi", "textbook-qlogehvi"]
"""BoTorch's tutorial loops (``benchmarks/textbook.py``), from the same initial design."""
PAPER_PROBLEM = "DTLZ2(6,3)"


def parse_strategy(label: str) -> tuple[str, dict, str | None]:
    r"""``'name{json settings}@commit'`` -> (name, settings, commit or None).

    A setting ``"ref_point": "problem"`` stands for the problem's own reference point.
    """
    commit = None
    if "@" in label and not label.rstrip().endswith("}"):
        label, commit = label.rsplit("@", 1)
    name, _, rest = label.partition("{")
    settings = json.loads("{" + rest) if rest else {}
    if name not in STRATEGIES + TEXTBOOK:
        raise SystemExit(f"error: --strategies: unknown strategy {name!r} in {label!r}; fix: "
                         f"use one of {', '.join(STRATEGIES + TEXTBOOK)}")
    return name, settings, commit


@dataclass(frozen=True, kw_only=True)
class Job:
    problem: str
    strategy: str
    """The label: a name, optionally with JSON settings and ``@commit`` (see parse_strategy)."""
    seed: int
    budget: int
    n_init: int
    batch: int
    threads: int
    time_final_ask: bool
    tree: str | None = None
    """Folder whose ``mmmo`` package to run (an earlier commit's), or None for this tree."""

    @property
    def key(self) -> str:
        r"""Identity of the run (without the budget: a longer run extends a shorter one)."""
        return f"{self.problem}|{self.strategy}|{self.seed}|{self.n_init}|{self.batch}"


def make_problem(name: str):
    from botorch.test_functions import multi_objective

    from benchmarks import synthetic

    cls_name, kwargs = PROBLEMS[name]
    module = multi_objective
    if cls_name.startswith("synthetic."):
        module, cls_name = synthetic, cls_name.removeprefix("synthetic.")
    return getattr(module, cls_name)(negate=True, **kwargs)


def run_job(job_and_prior: tuple[Job, dict | None]) -> dict:
    r"""One optimization run, continuing a cached shorter one; returns outcomes and timings.

    Continuing is exact: the told data is the optimizer's whole state, so telling the recorded
    batches again puts it where the shorter run stopped.
    """
    job, prior = job_and_prior
    if job.tree is not None:
        sys.path.insert(0, job.tree)  # a fresh process per job (maxtasksperchild=1)
    import torch

    torch.set_num_threads(job.threads)
    warnings.simplefilter("ignore")
    from mmmo.optimization import make_optimizer

    name, settings, _ = parse_strategy(job.strategy)

    problem = make_problem(job.problem)
    lb, ub = problem.bounds.numpy()

    def evaluate(X: np.ndarray) -> np.ndarray:
        return problem(torch.as_tensor(lb + X * (ub - lb), dtype=torch.double)).numpy()

    if settings.get("ref_point") == "problem":
        settings["ref_point"] = tuple(problem.ref_point.tolist())
    textbook = name in TEXTBOOK
    opt = make_optimizer(
        "random" if textbook else name,
        problem.dim,
        problem.num_objectives,
        seed=job.seed,
        n_init=job.n_init,
        **({} if textbook else settings),
    )
    if textbook:
        from benchmarks.textbook import candidates

        def ask(n: int) -> np.ndarray:
            if opt.n_told == 0:
                return opt.ask(n)
            torch.manual_seed(job.seed * 1000 + opt.n_told)
            kind = name.removeprefix("textbook-")
            return np.clip(candidates(kind, opt.X, opt.Y, problem.ref_point.numpy(), n), 0, 1)
    else:
        ask = opt.ask
    asks: list[dict] = []
    if prior is not None:
        asks = prior["asks"]
        X_prior, Y_prior = np.asarray(prior["X"]), np.asarray(prior["Y"])
        opt.tell(X_prior, Y_prior)
    while opt.n_told < job.budget:
        n = job.n_init if opt.n_told == 0 else min(job.batch, job.budget - opt.n_told)
        wall, cpu = time.perf_counter(), time.process_time()
        X = ask(n)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        asks.append({"n_told": opt.n_told, "n": n, "wall_s": wall, "cpu_s": cpu,
                     "load": os.getloadavg()[0]})
        opt.tell(X, evaluate(X))
    final_ask = prior.get("final_ask") if prior is not None else None
    if job.time_final_ask and opt.n_told == job.budget:
        wall, cpu = time.perf_counter(), time.process_time()
        ask(job.batch)
        final_ask = {
            "n_told": opt.n_told,
            "n": job.batch,
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "load": os.getloadavg()[0],
        }
    return {
        "key": job.key,
        "X": opt.X.tolist(),
        "Y": opt.Y.tolist(),
        "asks": asks,
        "final_ask": final_ask,
    }


def normalised_hv(Y: np.ndarray, problem, *, max_hv: float | None = None) -> float:
    r"""HV / the problem's maximum HV (or ``max_hv`` where the problem has none)."""
    from mmmo.optimization import hypervolume

    scale = max_hv if problem._max_hv is None else problem.max_hv
    if scale is None:
        raise ValueError(f"{type(problem).__name__} has no max_hv: pass one")
    return hypervolume(Y, problem.ref_point.numpy()) / float(scale)


def best_hv(results: dict[str, dict], jobs: list, problem_name: str, problem) -> float | None:
    r"""The largest HV any run of ``problem_name`` reached (to normalise a problem without a
    known maximum); ``None`` when the problem has one."""
    from mmmo.optimization import hypervolume

    if problem._max_hv is not None:
        return None
    ref = problem.ref_point.numpy()
    hvs = [hypervolume(np.asarray(results[j.key]["Y"], dtype=float), ref)
           for j in jobs if j.problem == problem_name and j.key in results]
    return max(hvs, default=0.0) or 1.0


def summarise(results: dict[str, dict], jobs: list[Job], budgets: list[int]) -> str:
    r"""The markdown table and the goal checks."""
    labels = list(dict.fromkeys(j.strategy for j in jobs))
    notes: list[str] = []
    lines = []
    head = "| problem | strategy | " + " | ".join(f"nHV@{b} mean ± sd" for b in budgets)
    head += " | s/ask wall (cpu) | ask(5)@60 wall (cpu) | load |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    table: dict[tuple[str, str, int], list[float]] = {}
    for problem_name in dict.fromkeys(j.problem for j in jobs):
        problem = make_problem(problem_name)
        scale = best_hv(results, jobs, problem_name, problem)
        if scale is not None:
            notes.append(f"{problem_name}: no known max HV; normalised by the best run's "
                         f"HV {scale:.4g}")
        for strategy in labels:
            mine = [
                j
                for j in jobs
                if j.problem == problem_name and j.strategy == strategy and j.key in results
            ]
            runs = [results[j.key] for j in mine]
            if not runs:
                continue
            cells = []
            for b in budgets:
                hv = [
                    normalised_hv(np.asarray(results[j.key]["Y"], dtype=float)[:b], problem,
                                  max_hv=scale)
                    for j in mine
                    if len(results[j.key]["Y"]) >= b
                ]
                if not hv:
                    cells.append("–")
                    continue
                table[(problem_name, strategy, b)] = hv
                sd = np.std(hv, ddof=1) if len(hv) > 1 else 0.0
                cells.append(f"{np.mean(hv):.4f} ± {sd:.4f}")
            model_asks = [a for r in runs for a in r["asks"][1:]]
            wall = np.mean([a["wall_s"] for a in model_asks]) if model_asks else float("nan")
            cpu = np.mean([a["cpu_s"] for a in model_asks]) if model_asks else float("nan")
            loads = [a["load"] for a in model_asks if "load" in a]
            load = f"{np.mean(loads):.1f}" if loads else "–"
            finals = [r["final_ask"] for r in runs if r.get("final_ask")]
            final = "–"
            if finals:
                final = (
                    f"{np.mean([f['wall_s'] for f in finals]):.1f} "
                    f"(max {max(f['wall_s'] for f in finals):.1f}) "
                    f"({np.mean([f['cpu_s'] for f in finals]):.1f})"
                )
            lines.append(
                f"| {problem_name} | {strategy} | "
                + " | ".join(cells)
                + f" | {wall:.2f} ({cpu:.2f}) | {final} | {load} |"
            )
    lines.append("")
    lines += notes
    key30 = (PAPER_PROBLEM, "mmmo", 30)
    if key30 in table and (PAPER_PROBLEM, "qehvi", 30) in table:
        mm = np.mean(table[key30])
        qe = np.mean(table[(PAPER_PROBLEM, "qehvi", 30)])
        rnd = np.mean(table.get((PAPER_PROBLEM, "random", 30), [np.nan]))
        lines.append(
            f"Goal (DTLZ2(6,3), 30 evaluations): mmmo {mm:.4f} >= qehvi {qe:.4f}: "
            f"{'yes' if mm >= qe else 'NO'}; mmmo > random {rnd:.4f}: "
            f"{'yes' if mm > rnd else 'NO'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES,
                        help="names, optionally with JSON settings and @COMMIT")
    parser.add_argument("--problems", nargs="+", default=DEFAULT_PROBLEMS,
                        choices=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 60])
    parser.add_argument(
        "--budget-subset",
        nargs="*",
        default=None,
        help="strategies run to the largest budget (others stop at the smallest); default all",
    )
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--final-ask-problems", nargs="*", default=[PAPER_PROBLEM],
                        help="problems whose runs also time one ask(batch) at the largest "
                        "budget (>= 60)")
    parser.add_argument("--results", type=Path, default=Path(".cache/optimizer_hv.json"))
    args = parser.parse_args(argv)
    budgets = sorted(set(args.budgets))

    from benchmarks import baseline_tree

    trees = {}
    for label in args.strategies:
        commit = parse_strategy(label)[2]
        trees[label] = None if commit is None else str(baseline_tree.tree(commit))
    jobs = []
    for problem in args.problems:
        for strategy in args.strategies:
            full = args.budget_subset is None or strategy in args.budget_subset
            for seed in range(args.seeds):
                jobs.append(
                    Job(
                        problem=problem,
                        strategy=strategy,
                        seed=seed,
                        budget=budgets[-1] if full else budgets[0],
                        n_init=args.n_init,
                        batch=args.batch,
                        threads=args.threads,
                        time_final_ask=budgets[-1] >= 60 and full
                        and problem in args.final_ask_problems,
                        tree=trees[strategy],
                    )
                )
    results: dict[str, dict] = {}
    if args.results.exists():
        results = json.loads(args.results.read_text())
    todo = [
        j
        for j in jobs
        if j.key not in results
        or len(results[j.key]["Y"]) < j.budget
        or (j.time_final_ask and not results[j.key].get("final_ask"))
    ]
    order = {"textbook-qlognehvi": -2, "textbook-qlogehvi": -1, "qnehvi": 0, "mmmo": 1,
             "qnparego": 2, "qehvi": 3, "cmaes": 4, "random": 5}
    # Seed by seed (a partial run already compares every row), expensive strategies first.
    todo.sort(key=lambda j: (j.seed, order[parse_strategy(j.strategy)[0]], j.problem))
    print(
        f"{len(jobs)} runs ({len(jobs) - len(todo)} cached), {args.workers} workers x "
        f"{args.threads} torch threads, {os.cpu_count()} CPUs, {platform.processor() or '?'}",
        flush=True,
    )
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    tasks = [(j, results.get(j.key)) for j in todo]
    with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
        for i, result in enumerate(pool.imap_unordered(run_job, tasks), 1):
            results[result["key"]] = result
            args.results.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.results.with_suffix(".tmp")
            tmp.write_text(json.dumps(results))
            tmp.replace(args.results)
            asks = result["asks"][1:]
            print(
                f"[{i}/{len(todo)} {time.perf_counter() - start:7.0f}s] {result['key']}: "
                f"{len(result['Y'])} evaluations, {sum(a['wall_s'] for a in asks):.0f}s wall "
                f"({sum(a['cpu_s'] for a in asks):.0f}s cpu) in model asks",
                flush=True,
            )
    budgets_shown = [b for b in budgets if any(j.budget >= b for j in jobs)]
    print()
    print(
        f"Normalised hypervolume (HV / max HV of the problem), mean ± sd over {args.seeds} "
        f"seeds; {args.n_init} Sobol points then batches of {args.batch}. s/ask: mean over the "
        "model-based asks of all runs (wall-clock and CPU seconds, "
        f"{args.threads} torch thread(s) per run, {args.workers} runs in parallel)."
    )
    print()
    print(summarise(results, jobs, budgets_shown))


if __name__ == "__main__":
    main()
