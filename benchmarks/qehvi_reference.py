r"""Our strategies against BoTorch's own tutorial loops, side by side, same initial points.

3-objective problems (BoTorch's, with their reference points and maximum hypervolumes):
``DTLZ2(6,3)`` (the paper's shape), ``VehicleSafety(5,3)`` and ``Penicillin(7,3)``; 10 Sobol
points (mm-mo's design, shared by every row), then 4 batches of 5 (the paper's budget).

Rows (``benchmarks/optimizer_hv.py`` labels, run by it):

- ``textbook-qlognehvi`` / ``textbook-qlogehvi``: BoTorch's multi-objective tutorial loop
  written out (``benchmarks/textbook.py``): ModelListGP, the problem's own reference point,
  ``optimize_acqf`` sequential, 10 restarts, 512 raw samples, 128 QMC samples;
- ``mmmo``, ``qehvi`` with their defaults (the reference point inferred from the observed front,
  as a real search must: there is no known reference point for task scores);
- ablations of ``mmmo`` that change one thing each (the reference point, the acquisition, the
  weak-to-strong step, the Fisher filter, the restarts and raw samples, ...);
- ``random``: the Sobol design continued.

Printed: normalised hypervolume at 30 evaluations (HV / the problem's max HV), mean ± sd over
seeds, each row's mean / the textbook qLogNEHVI loop's mean, and the seeds on which the row
beats it. ``--at COMMIT`` runs our rows with that commit's code (``benchmarks/baseline_tree.py``).

    python benchmarks/qehvi_reference.py [--seeds 5] [--workers 2] [--rows ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.optimizer_hv import make_problem, normalised_hv  # noqa: E402

PROBLEMS = ["DTLZ2(6,3)", "VehicleSafety(5,3)", "Penicillin(7,3)"]
REFERENCE = "textbook-qlognehvi"
ROWS = [
    REFERENCE,
    "textbook-qlogehvi",
    "mmmo",
    "qehvi",
    "random",
]
N_INIT, BATCH, ITERATIONS = 10, 5, 4


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=ROWS, help="optimizer_hv labels")
    parser.add_argument("--problems", nargs="+", default=PROBLEMS)
    parser.add_argument("--at", default=None, help="commit whose code runs every row")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / ".cache" / "qehvi_reference.json")
    parser.add_argument("--no-run", action="store_true", help="only summarise cached runs")
    args = parser.parse_args(argv)
    at = f"@{args.at}" if args.at else ""
    rows = [row + at for row in args.rows]
    budget = N_INIT + ITERATIONS * BATCH
    if not args.no_run:
        from benchmarks import optimizer_hv

        optimizer_hv.main([
            "--problems", *args.problems, "--strategies", *rows, "--seeds", str(args.seeds),
            "--budgets", str(budget), "--workers", str(args.workers), "--threads",
            str(args.threads), "--n-init", str(N_INIT), "--batch", str(BATCH),
            "--results", str(args.results),
        ])
    results = json.loads(args.results.read_text())
    reference = REFERENCE + at
    print(f"\nnHV@{budget} (mean ± sd over {args.seeds} seeds); / ref: the row's mean over the "
          f"mean of {reference}; wins: seeds on which the row's nHV > the reference's")
    print("\n| problem | row | nHV@30 | / ref | wins |")
    print("|---|---|---|---|---|")
    for name in args.problems:
        problem = make_problem(name)
        hv: dict[str, list[float]] = {}
        for row in rows:
            keys = [f"{name}|{row}|{seed}|{N_INIT}|{BATCH}" for seed in range(args.seeds)]
            if all(k in results for k in keys):
                hv[row] = [normalised_hv(np.asarray(results[k]["Y"])[:budget], problem)
                           for k in keys]
        ref = hv.get(reference)
        for row, values in hv.items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            ratio = wins = "–"
            if ref is not None:
                ratio = f"{statistics.mean(values) / statistics.mean(ref):.2f}"
                wins = f"{sum(v > r for v, r in zip(values, ref, strict=True))}/{len(values)}"
            print(f"| {name} | {row} | {statistics.mean(values):.4f} ± {sd:.4f} | {ratio} | "
                  f"{wins} |")


if __name__ == "__main__":
    main()
