"""Seconds of one ``ask(5)``: the demo's case and a layer-wise search, each strategy once.

    python benchmarks/ask_once.py [--strategies mmmo qehvi]

- the demo's case: 30 told points (uniform random, seeded), 7 dimensions, 4 objectives, on
  BoTorch's DTLZ2(7,4) and CarSideImpact(7,4);
- a layer-wise search: 60 told points, 30 dimensions, 5 objectives on ``LayeredMerge(30,5)``
  (``benchmarks/synthetic.py``), with ``surrogate`` ``gp`` and ``saas``.

Prints wall and CPU seconds of each ask and the load average. Old code against new, side by
side: ``benchmarks/ask_speed.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed_ask(strategy: str, X, Y, **settings) -> tuple[float, float]:  # noqa: ANN001
    """(wall, CPU) seconds of one ``ask(5)`` after telling ``X``, ``Y``."""
    from mmmo.optimization import make_optimizer

    opt = make_optimizer(strategy, X.shape[1], Y.shape[1], seed=0, n_init=10, **settings)
    opt.tell(X, Y)
    wall, cpu = time.perf_counter(), time.process_time()
    opt.ask(5)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["mmmo", "qehvi"])
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from botorch.test_functions.multi_objective import DTLZ2, CarSideImpact

    from benchmarks.synthetic import LayeredMerge

    def told(problem, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        X = np.random.default_rng(0).random((n, dim)).round(2)
        lo, hi = problem.bounds.numpy()
        return X, problem(torch.tensor(lo + X * (hi - lo))).numpy()

    cases = [("DTLZ2(7,4), 30 points", told(DTLZ2(dim=7, num_objectives=4, negate=True), 30, 7),
              {}),
             ("CarSideImpact(7,4), 30 points", told(CarSideImpact(negate=True), 30, 7), {}),
             ("LayeredMerge(30,5), 60 points", told(LayeredMerge(negate=True), 60, 30),
              {"surrogate": "gp"}),
             ("LayeredMerge(30,5), 60 points", told(LayeredMerge(negate=True), 60, 30),
              {"surrogate": "saas"})]
    for name, (X, Y), settings in cases:
        for strategy in args.strategies:
            wall, cpu = timed_ask(strategy, X, Y, **settings)
            extra = f" {settings}" if settings else ""
            print(f"{name:<31} {strategy}{extra}: ask(5) wall {wall:5.1f} s, cpu {cpu:5.1f} s, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
