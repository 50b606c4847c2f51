"""Can a search beat the untuned recipes on the layered family? Searches, confirms, prints gates.

On the layered fixture family (:mod:`mmmo.fixtures.layered`: a base and five band-limited
specialists), with the stable core APIs only (``parse_spec``, ``SearchSpace``, ``Materializer``,
``evaluate_benchmark``, ``make_optimizer``) driven by a plain ask/tell loop:

1. every single model (base, specialists) and the untuned recipes (linear, task_arithmetic,
   ties, dare_ties, breadcrumbs at mergekit-style defaults: weight 1/n, density 0.5 where the
   method reads one, the method's own ``normalize`` default) are scored;
2. searches: each strategy (default ``random`` = scrambled Sobol, and ``cmaes``) over
   layer-wise recipes (``merge.layer_groups: 3``: weight and density of each source as 3-knot
   gradients over the layers: 30 dimensions for ``dare_ties`` or ``ties``, 15 for
   ``task_arithmetic``, whose density mergekit never reads), ``--evals`` evaluations each
   (10 initial + batches of 5), scored on each objective task's seeded search subsample (the
   first ``--search-limit`` documents of :func:`mmmo.evaluation.tasks.select_docs`'s ranking);
   a search's pick is its trial with the best mean search score;
3. every row is then scored on the documents no search used (each objective task's
   complement of the search subsample) and on the held-out tasks (all documents).

Gates (:mod:`mmmo.fixtures.layered.gates`; objective mean = mean over the five skill tasks on
the unseen documents): each specialist >= +20 points over the base on its own skill; the best
search pick >= 10 points above the best single model and >= 5 points above the best untuned
recipe; >= 2 held-out tasks.

Every score is cached in a JSON file (``--cache``; keyed by family hash, recipe id, task and
document set), and every search's proposals too, so an interrupted report resumes where it
stopped and a finished one re-prints from the cache in seconds. Exits 1 when a gate fails.

    python benchmarks/layered_report.py                  # random + cmaes, dare_ties + TA
    python benchmarks/layered_report.py --quick          # smoke run (minutes): 12 evals, 40 docs
    python benchmarks/layered_report.py --strategies random,cmaes,qehvi --methods ties
    python benchmarks/layered_report.py --write-reference   # record the pick for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("DISABLE_MULTIPROC", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE_NAME = "reference.json"


# ----------------------------------------------------------------------------- the cache


class Cache:
    """Scores and search proposals in one JSON file, written atomically after every change."""

    def __init__(self, path: Path, family_hash: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"family": family_hash, "scores": {}, "searches": {}}
        if path.exists():
            loaded = json.loads(path.read_text())
            if loaded.get("family") == family_hash:
                self.data = loaded
            else:
                print(f"cache {path} is for family {loaded.get('family')}: starting afresh",
                      file=sys.stderr)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def score(self, key: str, compute: Callable[[], float]) -> float:
        scores = self.data["scores"]
        if key not in scores:
            scores[key] = compute()
            self.save()
        return scores[key]

    def search(self, name: str) -> dict[str, Any]:
        return self.data["searches"].setdefault(name, {"X": [], "trials": []})


# ----------------------------------------------------------------------------- scoring


class Scorer:
    """Scores the Materializer's resident model on a task's search, confirm or full documents."""

    def __init__(self, spec: Any, cache: Cache, batch_size: int,
                 confirm_limit: int | None = None) -> None:
        from mmmo.merging import Materializer

        self.cache = cache
        self.batch_size = batch_size
        self.confirm_limit = confirm_limit
        self.materializer = Materializer.from_spec(spec, device="cpu")
        self.tasks = {t.label: t for t in [*spec.objectives.tasks, *spec.heldout]}
        self.objectives = [t.label for t in spec.objectives.tasks]
        self.heldout = [t.label for t in spec.heldout]
        self.evaluations = 0

    def load(self, what: Any) -> Any:
        """Put a recipe (merged) or a model label (as is) into the resident model."""
        if isinstance(what, str):
            return self.materializer.load_model(what)
        return self.materializer.materialize(what)

    def scores(self, row_id: str, what: Any, docs: str, tasks: list[str]) -> dict[str, float]:
        """Cached scores of ``what`` (a recipe or a model label) on ``docs`` of ``tasks``."""
        from mmmo.fixtures.layered.gates import score

        loaded: list[Any] = []

        def compute(label: str) -> Callable[[], float]:
            def run() -> float:
                if not loaded:
                    loaded.append(self.load(what))
                self.evaluations += 1
                return score(loaded[0].model, loaded[0].tokenizer, self.tasks[label], docs,
                             self.batch_size, confirm_limit=self.confirm_limit)
            return run

        limit = self.tasks[self.objectives[0]].limit  # search and unseen documents depend on it
        key = {"search": f"search{limit}", "full": "full",
               "confirm": f"confirm{limit}+{self.confirm_limit or 'all'}"}[docs]
        return {t: self.cache.score(f"{row_id}|{t}|{key}", compute(t)) for t in tasks}


# ----------------------------------------------------------------------------- searches


def run_search(scorer: Scorer, cache: Cache, *, strategy: str, method: str, evals: int,
               n_init: int, batch: int, seed: int, layer_groups: int, search_limit: int,
               bo_objectives: str) -> dict[str, Any]:
    """One search (resumable through the cache); returns its trials and its pick.

    Random and CMA-ES are told the five task scores (CMA-ES maximises their mean); BO
    strategies either the same (``bo_objectives="tasks"``) or the mean task score and the
    sparsity (``"mean+sparsity"``: two objectives, the paper's kind of trade-off).
    """
    import numpy as np

    from mmmo.fixtures.layered.gates import make_spec, mean
    from mmmo.optimization import make_optimizer
    from mmmo.space import SearchSpace

    spec = make_spec(method, search_limit=search_limit, layer_groups=layer_groups,
                     sources=tuple(scorer.objectives))
    space = SearchSpace.from_spec(spec)
    name = f"{strategy}/{method}/g{layer_groups}/seed{seed}/limit{search_limit}/n{n_init}+{batch}"
    by_tasks = strategy in ("random", "cmaes") or bo_objectives == "tasks"
    n_obj, extra = (len(scorer.objectives), {}) if by_tasks else (2, {"task_objectives": (0,)})
    opt = make_optimizer(strategy, space.dim, n_obj, seed=seed, n_init=n_init, **extra)
    record = cache.search(name)
    trials: list[dict[str, Any]] = []
    step = 0
    started = time.perf_counter()
    while len(trials) < evals:
        size = n_init if not trials else min(batch, evals - len(trials))
        if step < len(record["X"]):
            X = record["X"][step]
        else:
            t0 = time.perf_counter()
            X = opt.ask(size).tolist()
            record["X"].append(X)
            record.setdefault("ask_seconds", []).append(round(time.perf_counter() - t0, 1))
            cache.save()
        rows = []
        for x in X:
            recipe = space.decode(x)
            scores = scorer.scores(recipe.recipe_id, recipe, "search", scorer.objectives)
            sparsity = cache.score(f"{recipe.recipe_id}|sparsity",
                                   lambda r=recipe: scorer.load(r).sparsity)
            obj = mean(scores, scorer.objectives)
            trials.append({"x": x, "scores": scores, "mean": obj, "sparsity": sparsity,
                           "recipe": recipe.model_dump(mode="json")})
            rows.append([scores[t] for t in scorer.objectives] if by_tasks
                        else [obj, -sparsity / 1e5])
        opt.tell(np.array(X), np.array(rows))
        step += 1
        best = max(t["mean"] for t in trials)
        print(f"  {name}: {len(trials)}/{evals} evaluated, best search mean {best:.3f} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    pick = max(trials, key=lambda t: t["mean"])
    return {"name": name, "trials": trials, "pick": pick, "space": space,
            "ask_seconds": record.get("ask_seconds", [])}


# ----------------------------------------------------------------------------- the report


def _fmt_row(label: str, scores: dict[str, float], tasks: list[str], obj: list[str],
             held: list[str]) -> str:
    from mmmo.fixtures.layered.gates import mean

    cells = [label, *(f"{scores[t]:.3f}" if t in scores else "-" for t in tasks)]
    cells.append(f"{mean(scores, obj):.3f}")
    if held:
        cells.append(f"{mean(scores, held):.3f}" if all(t in scores for t in held) else "-")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the report; returns the exit status (1 when a gate fails)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=60, help="evaluations per search")
    parser.add_argument("--n-init", type=int, default=10, help="initial design per search")
    parser.add_argument("--batch", type=int, default=5, help="proposals per ask after that")
    parser.add_argument("--strategies", default="random,cmaes", help="comma-separated")
    parser.add_argument("--methods", default="dare_ties,task_arithmetic",
                        help="comma-separated merge methods to search")
    parser.add_argument("--layer-groups", type=int, default=3)
    parser.add_argument("--search-limit", type=int, default=None,
                        help="documents per objective task a search sees (default 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bo-objectives", choices=("tasks", "mean+sparsity"),
                        default="mean+sparsity",
                        help="what BO strategies (qehvi, mmmo, ...) are told")
    parser.add_argument("--batch-size", type=int, default=64, help="lm-eval batch size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on cores shared with other jobs)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="score cache (default .cache/layered_report/<family hash>.json)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 12 evals (6 + 2 x 3) of random dare_ties, 40 search "
                        "and 40 unseen documents per task, no held-out tasks")
    parser.add_argument("--no-heldout", action="store_true", help="skip the held-out tasks")
    parser.add_argument("--confirm-limit", type=int, default=None,
                        help="score rows on only this many of the unseen documents per task")
    parser.add_argument("--write-reference", action="store_true",
                        help="record the rows and the best pick for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.evals, args.n_init, args.batch = 12, 6, 3
        args.strategies, args.methods = "random", "dare_ties"
        args.search_limit = args.search_limit or 40
        args.confirm_limit = args.confirm_limit or 40
        args.no_heldout = True

    import torch

    torch.set_num_threads(args.threads)
    from mmmo.fixtures.layered import SHIPPED_DIR, ensure_layered_family
    from mmmo.fixtures.layered.gates import SEARCH_LIMIT, UNTUNED, gates, make_spec, mean
    from mmmo.space import SearchSpace

    limit = args.search_limit or SEARCH_LIMIT
    start = time.perf_counter()
    family = ensure_layered_family()
    cache_path = args.cache or ROOT / ".cache" / "layered_report" / f"{family.builder_hash}.json"
    cache = Cache(cache_path, family.builder_hash)
    sources = tuple(family.sources)
    spec = make_spec("dare_ties", search_limit=limit, layer_groups=args.layer_groups,
                     sources=sources)
    scorer = Scorer(spec, cache, args.batch_size, args.confirm_limit)
    obj, held = scorer.objectives, ([] if args.no_heldout else scorer.heldout)
    space = SearchSpace.from_spec(spec)

    def row(row_id: str, what: Any) -> dict[str, float]:
        scores = scorer.scores(row_id, what, "confirm", obj)
        scores.update(scorer.scores(row_id, what, "full", held))
        return scores

    rows: list[tuple[str, str, dict[str, float]]] = []
    recipes: dict[str, Any] = {}
    for label in ["base", *sources]:
        rows.append((label, "base" if label == "base" else "single",
                     row(f"model:{label}", label)))
        print(f"  scored {label}", file=sys.stderr, flush=True)
    for method in UNTUNED:
        recipe = space.fixed_recipe(method=method)
        recipes[f"{method} (untuned)"] = recipe
        rows.append((f"{method} (untuned)", "untuned", row(recipe.recipe_id, recipe)))
        print(f"  scored untuned {method}", file=sys.stderr, flush=True)
    recipe = space.fixed_recipe(method="task_arithmetic", weight=1.0)
    rows.append(("task_arithmetic w=1 (uniform)", "info", row(recipe.recipe_id, recipe)))

    searches = []
    for method in args.methods.split(","):
        for strategy in args.strategies.split(","):
            result = run_search(scorer, cache, strategy=strategy, method=method,
                                evals=args.evals, n_init=args.n_init, batch=args.batch,
                                seed=args.seed, layer_groups=args.layer_groups,
                                search_limit=limit, bo_objectives=args.bo_objectives)
            recipe = result["space"].recipe(result["pick"]["recipe"])
            label = f"{strategy} {method} pick"
            recipes[label] = recipe
            rows.append((label, "search", row(recipe.recipe_id, recipe)))
            searches.append((label, result))

    tasks = [*obj, *held]
    print(f"layered family {family.builder_hash} at {family.root}")
    unseen = "the other documents" if args.confirm_limit is None \
        else f"{args.confirm_limit} other documents"
    print(f"objective tasks {', '.join(obj)}: searches see {limit} documents of each, every "
          f"row below is scored on {unseen}; held-out {', '.join(held) or '-'} "
          f"(all documents); searches: {args.evals} evaluations, layer_groups "
          f"{args.layer_groups}, seed {args.seed}\n")
    head = ["model / recipe", *tasks, "obj mean", *(["held-out mean"] if held else [])]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += [_fmt_row(label, scores, tasks, obj, held) for label, _, scores in rows]
    print("\n".join(table) + "\n")
    for label, result in searches:
        pick = result["pick"]
        asks = result["ask_seconds"]
        ask = f"; ask {max(asks):.0f} s at most" if asks else ""
        print(f"{label}: search mean {pick['mean']:.3f} (trial "
              f"{result['trials'].index(pick) + 1}/{len(result['trials'])}){ask}; "
              f"{json.dumps(pick['recipe']['parameters'])}")
    print()
    results = gates(rows, len(family.heldout_tasks), sources) if searches else []
    for gate in results:
        print(gate.line())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{scorer.evaluations} lm-eval runs in {time.perf_counter() - start:.0f} s "
          f"(load average now {load:.1f}; cache {cache_path})")
    if args.write_reference and searches:
        best = max((r for r in rows if r[1] == "search"), key=lambda r: mean(r[2], obj))
        untuned = max((r for r in rows if r[1] == "untuned"), key=lambda r: mean(r[2], obj))
        payload = {
            "builder_hash": family.builder_hash,
            "search_limit": limit,
            "rows": [{"label": label, "kind": kind, "scores": scores}
                     for label, kind, scores in rows],
            "best_pick": {"label": best[0],
                          "recipe": recipes[best[0]].model_dump(mode="json")},
            "best_untuned": untuned[0].split(" ")[0],
            "table": "\n".join(table),
        }
        (SHIPPED_DIR / REFERENCE_NAME).write_text(json.dumps(payload, indent=1, sort_keys=True)
                                                  + "\n")
    return 0 if all(g.passed for g in results) else 1


if __name__ == "__main__":
    sys.exit(main())
