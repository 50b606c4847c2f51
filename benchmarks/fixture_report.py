"""Can merging improve the fixture family? Prints the table and the three gates.

Evaluates, with lm-eval on the family's offline tasks: the base, each specialist, the default recipe
(dare_ties, equal weights, density 0.5, in its three readings) and a grid of 43 mergekit merges
(task_arithmetic, weights {.5, .75, 1} per model; dare_ties, weights {.5, 1} per model, density
.5 or .9; DARE seed 0). Gates (objective tasks = one per specialist skill):

1. each specialist beats the base by >= 20 points on its own skill task;
2. the best grid merge's objective mean beats every single model's by >= 5 points;
3. the default recipe (dare_ties, weight 1/3 each, normalize off, density .5) is >= 3 points
   below the best grid merge.

Exits non-zero when a gate fails. 50 lm-eval runs: 44 min measured on 2 CPU cores shared with
other jobs (load average ~6); an idle machine is faster.

    python benchmarks/fixture_report.py [--cache-dir DIR] [--full] [--write-reference]

``--write-reference`` records the table and the best grid recipe in
``mmmo/fixtures/data/reference.json``, which the tests use to re-check the gates cheaply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE"):
    os.environ.setdefault(_var, "1")

from mmmo.fixtures import Family, ensure_family  # noqa: E402
from mmmo.fixtures.quality import (  # noqa: E402
    BASE,
    FamilyEvaluator,
    Row,
    default_recipes,
    gates,
    grid_recipes,
    load_state,
    mean,
    merge,
)
from mmmo.fixtures.store import SHIPPED_DIR  # noqa: E402

REFERENCE_FILE = SHIPPED_DIR / "reference.json"


def evaluate_rows(cache_dir: str | None, full: bool) -> tuple[list[Row], Family]:
    """Score the single models, the default recipes and the grid.

    Single models, the gate's default recipe and the best grid merge get every task; the other
    rows only the objective tasks unless ``full``.
    """
    family = ensure_family(cache_dir)
    states = {name: load_state(path) for name, path in family.models.items()}
    evaluator = FamilyEvaluator(family)
    objectives = list(family.objective_tasks)
    some = None if full else objectives
    rows = [Row(BASE, "base", evaluator.score(states[BASE]))]
    rows += [Row(n, "specialist", evaluator.score(states[n])) for n in family.sources]
    n = len(family.sources)
    for i, recipe in enumerate(default_recipes(n)):
        kind, tasks = ("default", None) if i == 0 else ("default-alt", some)
        rows.append(Row(recipe.label, kind, evaluator.score(merge(recipe, states), tasks), recipe))
    recipes = grid_recipes(n)
    for j, recipe in enumerate(recipes):
        rows.append(Row(recipe.label, "grid", evaluator.score(merge(recipe, states), some), recipe))
        print(f"\r  grid {j + 1}/{len(recipes)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    best = max((r for r in rows if r.kind == "grid"), key=lambda r: mean(r.scores, objectives))
    if set(best.scores) != set(family.all_tasks):
        full_best = Row(
            best.label, "grid", evaluator.score(merge(best.recipe, states)), best.recipe
        )
        rows[rows.index(best)] = full_best
    return rows, family


def format_table(rows: list[Row], family: Family, top: int) -> str:
    """Markdown table: singles, defaults, then the ``top`` grid merges by objective mean."""
    obj, held = list(family.objective_tasks), list(family.heldout_tasks)
    tasks = list(family.all_tasks)
    head = ["model / merge", *tasks, "obj mean", "held-out mean"]
    grid = sorted((r for r in rows if r.kind == "grid"), key=lambda r: -mean(r.scores, obj))
    shown = [r for r in rows if r.kind != "grid"] + grid[:top]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in shown:
        cells = [r.label, *(_cell(r.scores, [t]) for t in tasks)]
        cells += [_cell(r.scores, obj), _cell(r.scores, held)]
        lines.append("| " + " | ".join(cells) + " |")
    worst = grid[-1]
    lines.append(
        f"({len(grid)} grid merges; shown: the top {top}; worst: {worst.label}, "
        f"obj mean {mean(worst.scores, obj):.3f}; '-': not evaluated, see --full)"
    )
    return "\n".join(lines)


def _cell(scores: dict[str, float], tasks: list[str]) -> str:
    return f"{mean(scores, tasks):.3f}" if all(t in scores for t in tasks) else "-"


def write_reference(rows: list[Row], family: Family, table: str) -> None:
    """Record the best grid recipe and the table for the tests."""
    obj = list(family.objective_tasks)
    best = max((r for r in rows if r.kind == "grid"), key=lambda r: mean(r.scores, obj))
    payload = {
        "builder_hash": family.builder_hash,
        "best_recipe": asdict(best.recipe),
        "best_scores": best.scores,
        "table": table,
    }
    REFERENCE_FILE.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the report; returns the exit status (1 when a gate fails)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="parent folder of family roots")
    parser.add_argument("--top", type=int, default=10, help="grid rows to print")
    parser.add_argument("--full", action="store_true", help="every task for every row")
    parser.add_argument("--write-reference", action="store_true", help="update reference.json")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows, family = evaluate_rows(args.cache_dir, args.full)
    table = format_table(rows, family, args.top)
    print(f"fixture family {family.builder_hash} at {family.root}\n")
    print(table + "\n")
    results = gates(rows, family)
    for gate in results:
        status = "PASS" if gate.passed else "FAIL"
        print(
            f"{status}  {gate.name}: {gate.value * 100:+.1f} points "
            f"(needs >= {gate.threshold * 100:.0f}) -- {gate.detail}"
        )
    print(f"\n{len(rows)} evaluations in {time.perf_counter() - start:.0f} s")
    if args.write_reference:
        write_reference(rows, family, table)
    return 0 if all(g.passed for g in results) else 1


if __name__ == "__main__":
    sys.exit(main())
