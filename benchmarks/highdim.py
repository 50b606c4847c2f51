r"""Layer-wise searches at d = 30: the plain GP against the SAAS GP, side by side in one run.

Problems (``benchmarks/synthetic.py``; 5 objectives each): ``EmbeddedDTLZ2(30,5)`` (BoTorch's
DTLZ2 on 8 of 30 coordinates) and ``LayeredMerge(30,5)`` (5 sources x 3 layer groups x
(weight, density), 4 task scores and the sparsity). 10 Sobol points, then batches of 5 up to
``--budget`` (60: 10 asks). Rows: each strategy with ``surrogate`` ``"gp"`` and ``"saas"``, and
random (Sobol). Printed by ``benchmarks/optimizer_hv.py``: normalised hypervolume at 30 and 60
evaluations (mean ± sd over seeds), seconds per ask, and one ``ask(5)`` timed at 60 told
points, with the load average.

``--nuts`` instead times BoTorch's fully Bayesian SAAS GP (``SaasFullyBayesianSingleTaskGP``
fitted by ``fit_fully_bayesian_model_nuts``, NumPyro) on one objective of ``LayeredMerge`` at
60 points, for BoTorch's default chain and two shorter ones: the reason ``surrogate="saas"`` is
the MAP SAAS model (needs ``pip install "botorch[fully-bayesian]"``).

    python benchmarks/highdim.py [--seeds 3] [--budget 60] [--workers 2]
    python benchmarks/highdim.py --nuts
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBLEMS = ["EmbeddedDTLZ2(30,5)", "LayeredMerge(30,5)"]
NUTS_CHAINS = ((512, 256, 16), (128, 64, 8), (64, 32, 4))  # warmup, samples, thinning


def nuts(threads: int) -> None:
    import numpy as np
    import torch
    from botorch.fit import fit_fully_bayesian_model_nuts
    from botorch.models.fully_bayesian import SaasFullyBayesianSingleTaskGP
    from botorch.models.transforms.outcome import Standardize

    from benchmarks.synthetic import LayeredMerge
    from mmmo.optimization.design import sobol_points

    torch.set_num_threads(threads)
    problem = LayeredMerge(negate=True)
    X = torch.as_tensor(sobol_points(dim=problem.dim, n=60, seed=0))
    Y = problem(X)[:, :1]
    for warmup, samples, thinning in NUTS_CHAINS:
        load = os.getloadavg()[0]
        wall, cpu = time.perf_counter(), time.process_time()
        model = SaasFullyBayesianSingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
        fit_fully_bayesian_model_nuts(model, warmup_steps=warmup, num_samples=samples,
                                      thinning=thinning, disable_progbar=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        load = np.mean([load, os.getloadavg()[0]])
        print(f"NUTS warmup {warmup:4d} samples {samples:4d} thinning {thinning:2d}: one objective "
              f"{wall:6.1f} s wall, {cpu:6.1f} s CPU (load {load:.1f}); x5 objectives "
              f"~{5 * wall:.0f} s wall", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", nargs="+", default=["mmmo", "qehvi"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--results", type=Path, default=ROOT / ".cache" / "highdim.json")
    parser.add_argument("--nuts", action="store_true", help="time the NUTS SAAS fit instead")
    args, rest = parser.parse_known_args(argv)
    if args.nuts:
        nuts(args.threads)
        return
    from benchmarks import optimizer_hv

    rows = []
    for strategy in args.strategies:
        name, _, commit = strategy.partition("@")
        at = f"@{commit}" if commit else ""
        rows += [f'{name}{{"surrogate": "gp"}}{at}', f'{name}{{"surrogate": "saas"}}{at}']
    rows.append("random")
    optimizer_hv.main([
        "--problems", *PROBLEMS, "--strategies", *rows, "--seeds", str(args.seeds),
        "--budgets", "30", str(args.budget), "--workers", str(args.workers),
        "--threads", str(args.threads), "--results", str(args.results),
        "--final-ask-problems", *PROBLEMS, *rest,
    ])


if __name__ == "__main__":
    main()
