r"""Seconds per ``ask`` of a strategy, old code against new, side by side in one run.

The demo's case: 4 objectives (3 task scores + sparsity), 7 dimensions, 30 told points,
``ask(5)``; and the asynchronous schedule's ``ask(1)`` with 4 points pending. Two problems:

- ``DTLZ2(7,4)``: BoTorch's DTLZ2, noiseless (the GPs infer the noise);
- ``CarSideImpact(7,4)``: BoTorch's vehicle design problem; the first 3 objectives are observed
  with Gaussian noise (2 % of their range) and told with that variance, the last one exactly
  (variance 0), as a merge search tells task scores with their standard errors and the exact
  sparsity: the fixed-noise GP path of the demo.

The told points are the same for every side: 10 Sobol points then 4 batches of 5 proposed by the
*baseline* ``mmmo`` (cached under ``.cache/ask_speed/``). Each measurement runs in a fresh
process (old code from ``git archive`` of ``--baseline``, new code from this tree), warms up with
one untimed ask (imports, BoTorch's C++ kernel), then times each case; old and new alternate,
``--reps`` times. Sides: the old code, and the new code with each of ``--variants`` (default:
its defaults, and its defaults with torch's thread count left alone). Printed: median wall and
CPU seconds per side, the median of the paired old/new ratios (the claim: the sides ran back to
back under the same load), and the 1-minute load average.

    python benchmarks/ask_speed.py [--baseline a290d2d] [--reps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: a worker imports the tree it was given

from benchmarks import baseline_tree  # noqa: E402

BASELINE = "a290d2d"  # the last commit before the faster ask
PROBLEMS = ("DTLZ2(7,4)", "CarSideImpact(7,4)")
CASES = ("ask(5)", "ask(1), 4 pending")
CACHE = ROOT / ".cache" / "ask_speed"
NOISE = 0.02  # noise sd of the noisy objectives, as a fraction of their range
# New sides: the defaults, and the defaults with torch's threads left alone (2 on 2 cores).
VARIANTS = ("{}", '{"threads": null}')


# --------------------------------------------------------------------------- problems
def make_problem(name: str):
    from botorch.test_functions import multi_objective as mo

    if name == "DTLZ2(7,4)":
        return mo.DTLZ2(dim=7, num_objectives=4, negate=True)
    if name == "CarSideImpact(7,4)":
        return mo.CarSideImpact(negate=True)
    raise SystemExit(f"error: unknown problem {name!r}; use one of {', '.join(PROBLEMS)}")


def observe(name: str, X: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    r"""Outcomes (maximised) and told noise variances (``None``: noiseless) at unit-cube ``X``."""
    import torch

    problem = make_problem(name)
    lb, ub = problem.bounds.numpy()
    Y = problem(torch.as_tensor(lb + X * (ub - lb), dtype=torch.double)).numpy()
    if name == "DTLZ2(7,4)":
        return Y, None
    grid = torch.rand(2048, problem.dim, generator=torch.Generator().manual_seed(0)).double()
    span = np.ptp(problem(problem.bounds[0] + grid * (problem.bounds[1] - problem.bounds[0]))
                  .numpy(), axis=0)
    sd = NOISE * span
    sd[-1] = 0.0  # the exact objective (sparsity's role)
    rng = np.random.default_rng([seed, len(X)])
    return Y + rng.normal(size=Y.shape) * sd, np.broadcast_to(sd**2, Y.shape).copy()


# --------------------------------------------------------------------------- worker side
def worker(job: dict) -> dict:
    r"""Runs in a fresh process whose ``sys.path`` starts with the tree to measure."""
    import warnings

    import torch

    torch.set_num_threads(job["threads"])
    warnings.simplefilter("ignore")
    import mmmo
    from mmmo.optimization import make_optimizer

    told = json.loads(Path(job["told"]).read_text())
    X, Y = np.asarray(told["X"]), np.asarray(told["Y"])
    Yvar = None if told["Yvar"] is None else np.asarray(told["Yvar"])
    dim, m = X.shape[1], Y.shape[1]

    def optimizer(n_told: int, **extra):
        settings = {**job["settings"], **extra}
        opt = make_optimizer(job["strategy"], dim, m, seed=job["seed"], **settings)
        opt.tell(X[:n_told], Y[:n_told], None if Yvar is None else Yvar[:n_told])
        return opt

    # Warm-up (imports, BoTorch's C++ kernel, first calls), cheap in every version's settings.
    optimizer(12, num_restarts=1, raw_samples=8, mc_samples=4, maxiter=2).ask(1)
    pending = np.round(np.random.default_rng(99).random((4, dim)), 2)
    tree = Path(mmmo.__file__).resolve().parents[1]
    assert tree == Path(job["tree"]).resolve(), f"imported {tree}, not {job['tree']}"
    out = {"tree": str(tree), "cases": {}}
    for case in job["cases"]:
        opt = optimizer(job["n_told"])
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        if case == "ask(5)":
            opt.ask(5)
        else:
            opt.ask(1, pending=pending)
        out["cases"][case] = {
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "load": (load + os.getloadavg()[0]) / 2,
        }
    return out


def generate(job: dict) -> dict:
    r"""The told data: 10 Sobol points, then batches of 5 asked by ``job['strategy']``."""
    import warnings

    import torch

    torch.set_num_threads(job["threads"])
    warnings.simplefilter("ignore")
    from mmmo.optimization import make_optimizer

    problem = make_problem(job["problem"])
    opt = make_optimizer(job["strategy"], problem.dim, problem.num_objectives, seed=job["seed"])
    while opt.n_told < job["n_told"]:
        X = opt.ask(10 if opt.n_told == 0 else 5)
        Y, Yvar = observe(job["problem"], X, seed=job["seed"])
        opt.tell(X, Y, Yvar)
    noisy = np.isfinite(opt.Yvar).all()
    return {"X": opt.X.tolist(), "Y": opt.Y.tolist(),
            "Yvar": opt.Yvar.tolist() if noisy else None}


def run_in(tree: Path, mode: str, job: dict) -> dict:
    r"""Run :func:`worker` or :func:`generate` in a fresh process that imports ``tree``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(ROOT)])}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    proc = subprocess.run(
        [sys.executable, __file__, f"--{mode}", json.dumps(job)],
        env=env, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- driver
def told_file(problem: str, seed: int, n_told: int, old: Path, sha: str, threads: int) -> Path:
    path = CACHE / f"told-{problem}-seed{seed}-n{n_told}-{sha}.json"
    if not path.exists():
        print(f"  generating the told data of {problem} with mmmo@{sha} ...", flush=True)
        data = run_in(old, "generate", {"problem": problem, "seed": seed, "n_told": n_told,
                                        "strategy": "mmmo", "threads": 1})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default=BASELINE, help="commit of the old code")
    parser.add_argument("--strategy", default="mmmo")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        help="JSON settings of each new side ({} = the defaults)")
    parser.add_argument("--old-settings", default="{}", help="JSON settings of the old side")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--n-told", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores: 2)")
    args = parser.parse_args(argv)
    if args.worker or args.generate:
        fn, job = (worker, args.worker) if args.worker else (generate, args.generate)
        print(json.dumps(fn(json.loads(job))))
        return

    old, sha = baseline_tree.tree(args.baseline), baseline_tree.label(args.baseline)
    sides = {f"old ({sha})": (old, json.loads(args.old_settings))}
    for variant in args.variants:
        sides[f"new {variant}"] = (ROOT, json.loads(variant))
    print(f"{args.strategy}: {args.n_told} told points, process torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs; old = {sha} {args.old_settings}; new = this tree", flush=True)
    results: dict[tuple[str, str, str], list[dict]] = {}
    for problem in args.problems:
        told = told_file(problem, args.seed, args.n_told, old, sha, args.threads)
        for rep in range(args.reps):
            order = list(sides)[rep % len(sides):] + list(sides)[:rep % len(sides)]
            for side in order:
                tree, settings = sides[side]
                out = run_in(tree, "worker", {
                    "tree": str(tree), "told": str(told), "strategy": args.strategy,
                    "settings": settings, "seed": args.seed + rep, "n_told": args.n_told, "cases": list(CASES),
                    "threads": args.threads})
                for case, r in out["cases"].items():
                    results.setdefault((problem, case, side), []).append(r)
                    print(f"  {problem} rep {rep} {side:24s} {case:18s} wall {r['wall_s']:6.1f} s"
                          f"  cpu {r['cpu_s']:6.1f} s  load {r['load']:.1f}", flush=True)
    print()
    old_side, *new_sides = list(sides)

    def ratio(a: list[dict], b: list[dict], key: str) -> float:
        return median(x[key] / y[key] for x, y in zip(a, b, strict=True))

    def cell(r: list[dict]) -> str:
        return f"{median(x['wall_s'] for x in r):.1f} ({median(x['cpu_s'] for x in r):.1f})"

    print("| problem | case | side | wall (cpu) s | old/side wall | old/side cpu | load |")
    print("|---|---|---|---|---|---|---|")
    for problem in args.problems:
        for case in CASES:
            a = results[(problem, case, old_side)]
            print(f"| {problem} | {case} | {old_side} | {cell(a)} | 1 | 1 | "
                  f"{np.mean([x['load'] for x in a]):.1f} |")
            for side in new_sides:
                b = results[(problem, case, side)]
                print(f"| {problem} | {case} | {side} | {cell(b)} | {ratio(a, b, 'wall_s'):.2f} "
                      f"| {ratio(a, b, 'cpu_s'):.2f} | {np.mean([x['load'] for x in b]):.1f} |")
    print("\nmedians over reps; ratios: median of the paired old/new ratios (same rep, "
          "back to back); load: mean 1-minute load average during the asks (2 cores).")


if __name__ == "__main__":
    main()
