"""Multi-fidelity and warm start, measured side by side in one run.

    python benchmarks/fidelity.py [--family fixture|layered] [--seeds 5] [--levels 0.2 1.0]
                                  [--eta 3] [--strategy mmmo] [--workdir DIR] [--quick]

1. For each seed, the same search (the demo's spec, or the layered family's, same number of
   recipes) twice: single fidelity (every recipe on each objective's whole subsample) and
   multi-fidelity (``optimizer.fidelity``: levels, eta). Printed per search and as means:
   documents evaluated, wall time, and the confirmed average of the pick over the objective
   tasks (the final table: documents no search used). The goal: >= 2x fewer documents with
   the confirmed average within one standard deviation.
2. Warm start: from the single-fidelity search of the first seed (a finished study), 10 new
   evaluations with ``optimizer.warm_start`` against 10 without (its initial design): the
   hypervolume of the new trials' objectives, both measured from the donor front's reference
   point.

Each finished search is kept in ``--workdir`` (default ``.cache/bench-fidelity``): a rerun
resumes. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _base_spec(args: argparse.Namespace) -> dict[str, Any]:
    from mmmo.spec import load_spec

    path = ROOT / "examples" / ("fixture.yaml" if args.family == "fixture" else "layered.yaml")
    data = load_spec(path).model_dump(mode="json")
    data["optimizer"]["strategy"] = args.strategy
    data["baselines"], data["heldout"] = [], data["heldout"][:1]
    data["compute"]["device"] = "cpu"
    if args.quick:
        data["optimizer"].update(n_init=4, batch_size=2, iterations=1)
        for task in data["objectives"]["tasks"]:
            task["limit"] = 60
    return data


def _search(args: argparse.Namespace, data: dict[str, Any], study: str,
            storage: str) -> dict[str, Any]:
    from mmmo.engine import run
    from mmmo.spec import parse_spec
    from mmmo.study import StudyStore

    keep = Path(args.workdir) / f"{study}.json"
    if keep.exists():
        return json.loads(keep.read_text())
    spec = parse_spec({**data, "study": study, "storage": storage})
    started = time.perf_counter()
    out = run(spec, finish=True)
    seconds = time.perf_counter() - started
    trials = StudyStore(spec.storage, study).trials()
    pick_row = next(r for r in out["table"]["rows"] if r.startswith("pick"))
    row = {"study": study, "seconds": seconds,
           "documents": sum(sum(t.documents.values()) for t in trials),
           "recipes": len(trials), "top_level": sum(t.level == max(
               (x.level for x in trials), default=0) for t in trials),
           "confirmed": out["table"]["rows"][pick_row]["avg objectives"],
           "estimate": statistics.fmean(out["pick"]["objectives"][t.label]
                                        for t in spec.objectives.tasks)}
    keep.write_text(json.dumps(row))
    return row


def _hypervolume(store: Any, ref: Any) -> float:
    import numpy as np

    from mmmo.optimization import hypervolume

    Y = np.array([[np.nan if v is None else v for v in t.values] for t in store.trials()])
    return hypervolume(Y, ref)


def main(argv: list[str] | None = None) -> None:
    """Run both comparisons and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["fixture", "layered"], default="fixture")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--strategy", default="mmmo")
    parser.add_argument("--workdir", default=str(ROOT / ".cache" / "bench-fidelity"))
    parser.add_argument("--quick", action="store_true", help="a tiny budget (a smoke run)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MMMO_CACHE_DIR", str(ROOT / ".cache"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    storage = str(Path(args.workdir) / "studies")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} cores); family {args.family}, strategy {args.strategy}, "
          f"levels {args.levels}, eta {args.eta}", flush=True)
    base = _base_spec(args)
    rows: dict[str, list[dict[str, Any]]] = {"single": [], "multi": []}
    tag = f"{args.family}-{args.strategy}{'-quick' if args.quick else ''}"
    for seed in range(args.seeds):
        for kind in ("single", "multi"):
            data = json.loads(json.dumps(base))
            data["optimizer"]["seed"] = seed
            if kind == "multi":
                data["optimizer"]["fidelity"] = {"levels": args.levels, "eta": args.eta}
            row = _search(args, data, f"{tag}-{kind}-s{seed}", storage)
            rows[kind].append(row)
            print(f"seed {seed} {kind:6s} {row['recipes']} recipes, {row['documents']:6d} "
                  f"documents, {row['seconds']:7.1f} s; pick confirmed "
                  f"{row['confirmed']:.3f} (estimate {row['estimate']:.3f})", flush=True)
    for kind, found in rows.items():
        conf = [r["confirmed"] for r in found]
        print(f"{kind:6s}: documents {statistics.fmean(r['documents'] for r in found):8.0f}, "
              f"wall {statistics.fmean(r['seconds'] for r in found):7.1f} s, confirmed "
              f"{statistics.fmean(conf):.3f} +- "
              f"{statistics.stdev(conf) if len(conf) > 1 else 0.0:.3f}")
    single, multi = rows["single"], rows["multi"]
    ratio = statistics.fmean(r["documents"] for r in single) / \
        statistics.fmean(r["documents"] for r in multi)
    gap = statistics.fmean(r["confirmed"] for r in single) - \
        statistics.fmean(r["confirmed"] for r in multi)
    spread = statistics.stdev([r["confirmed"] for r in single]) if len(single) > 1 else 0.0
    wall = statistics.fmean(r["seconds"] for r in single) / \
        statistics.fmean(r["seconds"] for r in multi)
    print(f"documents single/multi: {ratio:.2f}x; confirmed average single - multi: "
          f"{gap:+.3f} (one std of single: {spread:.3f}); wall single/multi: {wall:.2f}x",
          flush=True)
    _warm_start(args, base, tag, storage)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _warm_start(args: argparse.Namespace, base: dict[str, Any], tag: str,
                storage: str) -> None:
    import numpy as np

    from mmmo.optimization import infer_ref_point
    from mmmo.study import StudyStore

    donor = StudyStore(storage, f"{tag}-single-s0")
    Y = np.array([[np.nan if v is None else v for v in t.values] for t in donor.trials()])
    ref = infer_ref_point(Y)
    out = {}
    for warm in (False, True):
        data = json.loads(json.dumps(base))
        data["optimizer"].update(seed=1, n_init=5 if warm else 10, batch_size=5,
                                 iterations=1 if warm else 0,
                                 warm_start=[donor.url] if warm else [])
        study = f"{tag}-{'warm' if warm else 'cold'}-10"
        _search(args, data, study, storage)
        out[warm] = _hypervolume(StudyStore(storage, study), ref)
    print(f"warm start: hypervolume of 10 new evaluations {out[True]:.4g} with, "
          f"{out[False]:.4g} without (ratio {out[True] / max(out[False], 1e-12):.2f}), "
          "from the donor front's reference point")


if __name__ == "__main__":
    main()
