"""Seconds per benchmark per trial on the fixture family, and how much of it is model forward time.

Runs the demo's objectives (the three skill tasks, ``limit`` documents each, metric acc) plus the
``gen`` task (generate_until, exact_match) on a resident model for several trials, changing the
weights in place between trials as a search does, and prints per benchmark: wall seconds, time
in the LM's request methods, time in model forwards, and the forward share. Trial 1 is cold (it
loads the task objects); later trials re-use them. With ``--simple-evaluate`` it also times
lm-eval's ``simple_evaluate`` on the same HFLM and documents, side by side.

Uses the real fixture family when its weights are shipped (``ensure_family`` without training),
else a stand-in of the same shape: random weights with the family's config, tokenizer and task
files (a random model never stops generating early, so ``gen`` is then a worst case).

    python benchmarks/eval_speed.py --trials 3 --limit 200 --gen-limit 50 --batch-size 64

On a CPU shared with other work, ``--threads 1`` can be several times faster than torch's default
(OpenMP threads spin on preempted cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def family_models(tmp: Path) -> tuple[str, object, object, dict[str, Path]]:
    """(what, model, tokenizer, task name -> YAML) of the fixture family or its stand-in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from mmmo.fixtures import builder_hash, ensure_family
        from mmmo.fixtures.config import DEFAULT_CONFIG
        from mmmo.fixtures.store import SHIPPED_DIR, load_meta

        if load_meta(SHIPPED_DIR)["builder_hash"] == builder_hash(DEFAULT_CONFIG):
            fam = ensure_family()
            model = AutoModelForCausalLM.from_pretrained(fam.base, dtype=torch.float32).eval()
            tasks = {**fam.objective_tasks, "gen": fam.extra_tasks["gen"]}
            return "fixture family (trained base)", model, AutoTokenizer.from_pretrained(
                fam.base), tasks
    except Exception as exc:  # not shipped / not landed: fall back to the stand-in
        print(f"(fixture family unavailable: {type(exc).__name__}: {exc})")
    from mmmo.fixtures.config import DEFAULT_CONFIG
    from mmmo.fixtures.skills import SKILL_NAMES
    from mmmo.fixtures.tasks import write_tasks
    from mmmo.fixtures.tokenizer import build_tokenizer
    from mmmo.fixtures.train import new_model

    torch.manual_seed(0)
    model = new_model(DEFAULT_CONFIG.model).eval()
    paths = write_tasks(tmp / "tasks", DEFAULT_CONFIG.items_per_task, DEFAULT_CONFIG.seed)
    tasks = {n: paths[n] for n in SKILL_NAMES} | {"gen": paths["gen"]}
    return "stand-in (fixture shape, random weights)", model, build_tokenizer(), tasks


def perturb(model, seed: int) -> None:
    """Change the resident weights in place (what the next trial's merge does)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--gen-limit", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--simple-evaluate", action="store_true",
                        help="also time lm-eval's simple_evaluate on the same documents")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mmmo.evaluation import BenchmarkResult, evaluate_benchmark, get_lm
    from mmmo.spec import TaskSpec

    with tempfile.TemporaryDirectory() as tmp:
        what, model, tok, tasks = family_models(Path(tmp))
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{what}: {n_params / 1e6:.2f}M parameters, torch threads "
              f"{torch.get_num_threads()}, batch size {args.batch_size}")
        specs = [TaskSpec(task=str(path), name=name,
                          metric="exact_match" if name == "gen" else "acc",
                          limit=args.gen_limit if name == "gen" else args.limit)
                 for name, path in tasks.items()]
        rows: dict[str, list[BenchmarkResult]] = {s.label: [] for s in specs}
        for trial in range(args.trials):
            if trial:
                perturb(model, trial)
            start = time.perf_counter()
            for spec in specs:
                out = evaluate_benchmark(model, tok, spec, batch_size=args.batch_size)
                assert isinstance(out, BenchmarkResult), out
                rows[spec.label].append(out)
            print(f"trial {trial + 1}: {time.perf_counter() - start:.2f} s for {len(specs)} "
                  "benchmarks")

        print("\n| benchmark | docs | trial 1 s | later trials s (mean) | request s | "
              "forward s | forward share |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, results in rows.items():
            later = results[1:] or results
            wall = statistics.mean(r.seconds for r in later)
            req = statistics.mean(r.request_seconds for r in later)
            fwd = statistics.mean(r.forward_seconds for r in later)
            print(f"| {label} | {results[0].n_docs} | {results[0].seconds:.2f} | {wall:.2f} | "
                  f"{req:.2f} | {fwd:.2f} | {fwd / wall:.0%} |")

        if args.simple_evaluate:
            import lm_eval

            lm = get_lm(model, tok, batch_size=args.batch_size)
            from mmmo.evaluation import default_registry

            print("\n| benchmark | evaluate_benchmark s | simple_evaluate s | ratio |")
            print("|---|---:|---:|---:|")
            for spec in specs:
                ours = rows[spec.label][-1]
                with default_registry().checkout(spec) as loaded:
                    start = time.perf_counter()
                    lm_eval.simple_evaluate(model=lm, tasks=list(loaded.leaves.values()),
                                            samples=ours.doc_indices, log_samples=False,
                                            bootstrap_iters=1000)
                    theirs = time.perf_counter() - start
                print(f"| {spec.label} | {ours.seconds:.2f} | {theirs:.2f} | "
                      f"{theirs / ours.seconds:.1f}x |")


if __name__ == "__main__":
    main()
