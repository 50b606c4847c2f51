"""How busy 2 device slots are under the ``batch`` and ``async`` schedules, side by side.

    python benchmarks/slot_utilisation.py [--budget 14] [--limit 60] [--strategy mmmo]

Three searches of the same spec over the fixture family, each on 2 slots: ``batch``,
``async-free`` (``async`` asking only once a slot freed, ``ask_ahead: false``) and ``async``
(the default ``ask_ahead``: the next recipe asked while both slots are busy), in threads of
this process (CPU), from fresh result stores (nothing is a cache hit), the slots'
models loaded before the clock starts. For each slot it prints the busy fraction: the time a
trial was in flight on it (from its trial's ``started_at`` to ``ended_at``) over the search's
wall time; then trials per minute, and the ratios to batch. In ``batch`` a slot idles while
the optimizer fits its GPs and asks (every slot waits for the ask) and while the slowest trial
of a batch finishes; in ``async-free`` the freed slot waits for its ask while the other keeps
evaluating; in ``async`` the recipe is ready when the slot frees. The goal is >= 0.9 busy
under ``async``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: The runs: name -> (schedule, ask_ahead).
RUNS = {"batch": ("batch", False), "async-free": ("async", False), "async": ("async", True)}


def _spec(args: argparse.Namespace, storage: str, run: str) -> Any:
    from mmmo.spec import load_spec, parse_spec

    schedule, ask_ahead = RUNS[run]

    data = load_spec(ROOT / "examples" / "fixture.yaml").model_dump(mode="json")
    for task in data["objectives"]["tasks"]:
        task["limit"] = args.limit
    data["heldout"], data["baselines"] = [], []
    n_init = max(2, args.budget - 2 * args.iterations)
    data["optimizer"].update(strategy=args.strategy, n_init=n_init, batch_size=2,
                             iterations=args.iterations, seed=args.seed, schedule=schedule,
                             ask_ahead=ask_ahead)
    data["compute"].update(device="cpu", max_concurrent_trials=2)
    data["storage"], data["study"] = storage, f"slots-{run}"
    return parse_spec(data)


def _measure(args: argparse.Namespace, run_name: str, root: Path) -> dict[str, Any]:
    from mmmo.engine import run
    from mmmo.engine.slots import Slot
    from mmmo.study import StudyStore

    spec = _spec(args, str(root / run_name), run_name)
    for i in range(2):
        _ = Slot(spec, i, "cpu").backend  # resident before the clock starts (per process)
    started = time.time()
    out = run(spec, finish=False)
    wall = time.time() - started
    assert out["complete"], out
    trials = StudyStore(spec.storage, spec.study_name).trials()
    busy = {0: 0.0, 1: 0.0}
    for t in trials:
        busy[t.slot] += t.timings["ended_at"] - t.timings["started_at"]
    return {"wall": wall, "trials": len(trials), "busy": {k: v / wall for k, v in busy.items()},
            "per_minute": 60.0 * len(trials) / wall}


def main(argv: list[str] | None = None) -> None:
    """Run the three schedules and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=14, help="trials per search")
    parser.add_argument("--iterations", type=int, default=4,
                        help="batch iterations of 2 after the initial design")
    parser.add_argument("--limit", type=int, default=60, help="documents per objective task")
    parser.add_argument("--strategy", default="mmmo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("MMMO_CACHE_DIR", str(ROOT / ".cache"))
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="mmmo-slots-") as tmp:
        figures = {r: _measure(args, r, Path(tmp)) for r in RUNS}
    for name, f in figures.items():
        busy = ", ".join(f"slot {k} {v:.2f}" for k, v in f["busy"].items())
        print(f"{name:10s} {f['trials']} trials in {f['wall']:7.1f} s: busy {busy}; "
              f"{f['per_minute']:.2f} trials/min")
    mean = {r: sum(f["busy"].values()) / 2 for r, f in figures.items()}
    b = figures["batch"]
    for name in ("async-free", "async"):
        print(f"ratio {name}/batch: busy {mean[name] / mean['batch']:.2f} "
              f"({mean[name]:.2f} vs {mean['batch']:.2f}); trials/min "
              f"{figures[name]['per_minute'] / b['per_minute']:.2f}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
