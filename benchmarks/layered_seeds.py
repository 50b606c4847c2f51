"""Strategies on the layered family over seeds, with paired significance tests.

    python benchmarks/layered_seeds.py [--seeds 5] [--strategies mmmo,qehvi,random,cmaes]
                                       [--budgets 30 60] [--cache FILE]

Runs (or, from ``layered_report.py``'s cache, re-reads) each strategy's layer-wise
``dare_ties`` search of ``benchmarks/layered_report.py`` (30 dimensions, 10 + batches of 5, 120
search documents per objective task) for every seed. At each budget a search's pick is its
trial with the best mean search score among its first ``budget`` evaluations; the pick is then
scored on the documents no search used (each objective task's other 240). Printed: the
confirmed objective mean of each strategy (mean ± sd over seeds) and of the best untuned
recipe; then, for ``mmmo`` against each other row, the paired differences over seeds, their
mean with a 95 % bootstrap confidence interval (10 000 resamples of the seeds) and the
two-sided Wilcoxon signed-rank p-value. With 5 seeds the smallest possible Wilcoxon p is
0.0625: no comparison can reach p < 0.05 from 5 pairs; the bootstrap interval is the finer one.
Everything is cached (the report's cache), so a rerun re-prints in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("layered_report", ROOT / "benchmarks" /
                                               "layered_report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

from benchmarks.stats import bootstrap_ci, wilcoxon_p  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--strategies", default="mmmo,qehvi,random,cmaes")
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mmmo.fixtures.layered import ensure_layered_family
    from mmmo.fixtures.layered.gates import SEARCH_LIMIT, UNTUNED, make_spec, mean
    from mmmo.space import SearchSpace

    family = ensure_layered_family()
    path = args.cache or ROOT / ".cache" / "layered_report" / f"{family.builder_hash}.json"
    cache = report.Cache(path, family.builder_hash)
    spec = make_spec("dare_ties", search_limit=SEARCH_LIMIT, sources=tuple(family.sources))
    scorer = report.Scorer(spec, cache, 64)
    obj = scorer.objectives
    space = SearchSpace.from_spec(spec)

    def confirmed(recipe) -> float:
        return mean(scorer.scores(recipe.recipe_id, recipe, "confirm", obj), obj)

    untuned = {m: confirmed(space.fixed_recipe(method=m)) for m in UNTUNED}
    best_untuned = max(untuned, key=untuned.get)
    strategies = args.strategies.split(",")
    table: dict[tuple[str, int], list[float]] = {}
    for strategy in strategies:
        for seed in range(args.seeds):
            result = report.run_search(
                scorer, cache, strategy=strategy, method="dare_ties", evals=max(args.budgets),
                n_init=10, batch=5, seed=seed, layer_groups=3, search_limit=SEARCH_LIMIT,
                bo_objectives="tasks")
            for budget in args.budgets:
                pick = max(result["trials"][:budget], key=lambda t: t["mean"])
                value = confirmed(space.recipe(pick["recipe"]))
                table.setdefault((strategy, budget), []).append(value)

    load = os.getloadavg()[0]
    print(f"layered family {family.builder_hash}: confirmed objective mean (%) of each "
          f"search's pick, {args.seeds} seeds; load average {load:.1f}\n")
    print("| strategy | " + " | ".join(f"{b} evaluations" for b in args.budgets) + " |")
    print("|---|" + "---|" * len(args.budgets))
    for strategy in strategies:
        cells = [f"{100 * statistics.mean(table[strategy, b]):.1f} ± "
                 f"{100 * statistics.stdev(table[strategy, b]):.1f}" for b in args.budgets]
        print(f"| {strategy} | " + " | ".join(cells) + " |")
    print(f"| {best_untuned} (untuned, best of {len(UNTUNED)}) | "
          + " | ".join(f"{100 * untuned[best_untuned]:.1f}" for _ in args.budgets) + " |\n")
    print("mmmo minus each row, paired by seed (points): mean [95 % bootstrap CI], Wilcoxon p")
    for budget in args.budgets:
        ours = table["mmmo", budget]
        rivals = [(s, table[s, budget]) for s in strategies if s != "mmmo"]
        rivals.append((f"{best_untuned} untuned", [untuned[best_untuned]] * len(ours)))
        for name, theirs in rivals:
            diffs = [100 * (a - b) for a, b in zip(ours, theirs, strict=True)]
            lo, hi = bootstrap_ci(diffs)
            sig = "significant" if lo > 0 or hi < 0 else "not significant"
            print(f"  {budget:>3} evals vs {name:<16} {statistics.mean(diffs):+6.1f} "
                  f"[{lo:+.1f}, {hi:+.1f}]  p={wilcoxon_p(diffs):.3f}  ({sig} by the CI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
