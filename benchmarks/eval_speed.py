"""Seconds per trial, ``hf`` vs ``vllm`` evaluation backend: same recipes, same benchmarks, one run.

A trial is what the search's evaluation step does: serve the recipe (merge in memory; for vllm
also write the merged tensors to /dev/shm and reload the engine in place), then score every
benchmark on it (one after another on ``hf``; at the same time on ``vllm``, whose engine
batches them). Per backend and trial it prints the serve seconds (merge, reload), the benchmark
seconds, the trial total and the peak memory while the trial ran: this process's RSS, the
engine processes' RSS, /dev/shm in use, and on CUDA the device memory in use (all processes)
and this process's own allocations. Then the ratio hf / vllm of the median trial, and whether
both backends gave the same scores. The backends take turns, trial by trial, so that both
see the same load on a shared machine. Start-up (resident sources, engine start) is printed apart:
a search pays it once per slot.

Families: the fixture family (default; tasks dbl, rev, srt: multiple choice, and gen:
generation), or a random-weight Qwen2 family of any size with ``--hidden-size/--layers`` and
synthetic tasks in its word-level vocabulary (a random model never stops generating early, so
generation runs to ``max_gen_toks``: a worst case).

    python benchmarks/eval_speed.py                                  # fixture family, hf + vllm
    python benchmarks/eval_speed.py --trials 3 --limit 100 --gen-limit 30 --threads 1
    python benchmarks/eval_speed.py --backends hf --device cuda --dtype bfloat16 \\
        --hidden-size 2048 --layers 18 --intermediate-size 5632 --vocab-size 32000  # >= 1B

``--backends vllm`` needs the engine environment (``make setup-vllm``). On a CPU shared with
other work, ``--threads 1`` can be several times faster than torch's default for ``hf``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--limit", type=int, default=100, help="documents per multiple-choice task")
    p.add_argument("--gen-limit", type=int, default=30, help="documents of the gen task")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:<i>")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--hidden-size", type=int, default=None, help="random family of this width")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--intermediate-size", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--max-gen-toks", type=int, default=16, help="random family's gen task")
    p.add_argument("--max-model-len", type=int, default=None, help="vllm engine context")
    p.add_argument("--workdir", default=None, help="where a random family is written")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- family + tasks


def _family(args: argparse.Namespace, workdir: Path, dtype: str) -> dict[str, Any]:
    """Spec parts (base, sources, tasks) and a description."""
    if not args.hidden_size:
        from mmmo.fixtures import ensure_family

        ensure_family()
        tasks = [{"task": f"fixture:tasks/{n}.yaml", "metric": "acc", "limit": args.limit}
                 for n in ("dbl", "rev", "srt")]
        tasks.append({"task": "fixture:tasks/gen.yaml", "metric": "exact_match",
                      "limit": args.gen_limit})
        return {"base": {"path": "fixture:models/base"},
                "sources": [{"path": f"fixture:models/{n}"} for n in ("dbl", "rev", "srt")],
                "tasks": tasks, "what": "fixture family (2.65M params/model)",
                "max_model_len": args.max_model_len or 64}
    from tests.support.synthetic import FamilyPaths, build_random_family

    started = time.perf_counter()
    if (workdir / "family" / "base" / "config.json").exists():  # e.g. merge_speed's, same flags
        import math

        from mmmo.merging.models import read_tensor_headers

        params = sum(math.prod(h.shape) for h in
                     read_tensor_headers(workdir / "family" / "base").values())
        paths = FamilyPaths(base=workdir / "family" / "base", params=params,
                            sources=tuple(sorted(p.parent for p in (workdir / "family").glob(
                                "src*/config.json"))))
        print(f"# re-using the family in {workdir / 'family'}")
    else:
        paths = build_random_family(
            workdir / "family", hidden_size=args.hidden_size, layers=args.layers or 2,
            intermediate_size=args.intermediate_size, vocab_size=args.vocab_size, n_sources=3,
            dtype=dtype, device="cuda" if args.device.startswith("cuda") else "cpu")
    # the fixture family's character tokenizer (ids < 77, valid for any vocabulary): the
    # synthetic word-level one loads as Qwen2's byte-level tokenizer under transformers 5 and
    # then encodes its own words as nothing (see mmmo.fixtures.tokenizer)
    from mmmo.fixtures.tokenizer import save_tokenizer

    for folder in (paths.base, *paths.sources):
        save_tokenizer(folder)
    tasks = _random_tasks(workdir / "tasks", args.limit, args.gen_limit, args.max_gen_toks)
    return {"base": {"path": str(paths.base)},
            "sources": [{"path": str(s), "name": s.name} for s in paths.sources],
            "tasks": tasks, "max_model_len": args.max_model_len or 512,
            "what": f"random Qwen2 family, hidden {args.hidden_size}, {args.layers} layers, "
                    f"{paths.params / 1e9:.2f}B params/model (built in "
                    f"{time.perf_counter() - started:.0f} s)"}


def _random_tasks(folder: Path, limit: int, gen_limit: int,
                  max_gen_toks: int) -> list[dict[str, Any]]:
    """A multiple-choice and a generation task in letters (one token each): 48-token
    prompts, 8-token choices."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)

    def letters(n: int) -> str:
        return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(n))

    rows = []
    for _ in range(max(limit, gen_limit)):
        choices = [letters(8) for _ in range(4)]
        rows.append({"prompt": letters(48) + "=", "choices": choices,
                     "label": rng.randrange(4), "answer": choices[0]})
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
            f"{json.dumps(str(data))}\ntest_split: test\ndoc_to_text: prompt\n"
            "target_delimiter: \"\"\nmetadata:\n  version: 1.0\n")
    (folder / "mc.yaml").write_text(
        "task: speed_mc\noutput_type: multiple_choice\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n" + head)
    (folder / "gen.yaml").write_text(
        "task: speed_gen\noutput_type: generate_until\ndoc_to_target: answer\n"
        f"generation_kwargs:\n  until: [\"\\n\"]\n  do_sample: false\n  max_gen_toks: "
        f"{max_gen_toks}\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n" + head)
    return [{"task": str(folder / "mc.yaml"), "metric": "acc", "limit": limit},
            {"task": str(folder / "gen.yaml"), "metric": "exact_match", "limit": gen_limit}]


# ----------------------------------------------------------------------------- memory


def _rss(pid: int | str = "self") -> int:
    """Resident bytes of a process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _group(pgid: int | None) -> list[int]:
    if not pgid:
        return []
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


class Peaks:
    """Samples memory every 50 ms while a trial runs; keeps the peaks."""

    def __init__(self, *, engine_pgid: int | None, shm_dir: str, cuda: Any) -> None:
        self.engine_pgid, self.shm_dir, self.cuda = engine_pgid, shm_dir, cuda
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        shm = os.statvfs(shm_dir)
        self._shm0 = (shm.f_blocks - shm.f_bfree) * shm.f_frsize

    def _sample(self) -> None:
        values = {"process_rss": _rss(),
                  "engine_rss": sum(_rss(p) for p in _group(self.engine_pgid))}
        shm = os.statvfs(self.shm_dir)
        values["shm"] = max(0, (shm.f_blocks - shm.f_bfree) * shm.f_frsize - self._shm0)
        if self.cuda is not None:
            import torch

            free, total = torch.cuda.mem_get_info(self.cuda)
            values["device_used"] = total - free
        for key, value in values.items():
            self.peak[key] = max(self.peak.get(key, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self) -> Peaks:
        if self.cuda is not None:
            import torch

            torch.cuda.reset_peak_memory_stats(self.cuda)
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.cuda is not None:
            import torch

            self.peak["process_device_alloc"] = torch.cuda.max_memory_allocated(self.cuda)

    def line(self) -> str:
        gb = {k: v / 2**30 for k, v in self.peak.items()}
        text = (f"host: process {gb['process_rss']:.2f} GiB, engine {gb['engine_rss']:.2f} GiB, "
                f"/dev/shm {gb['shm']:.2f} GiB")
        if "device_used" in gb:
            text += (f" | device: used {gb['device_used']:.2f} GiB (all processes), this "
                     f"process allocated {gb['process_device_alloc']:.2f} GiB")
        return text


# ----------------------------------------------------------------------------- trials


def _start(name: str, spec: Any, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Build one backend (resident sources; for vllm the engine start)."""
    from mmmo.evaluation.backend import backend_for

    started = time.perf_counter()
    backend = backend_for(spec, 0, args.device, logs)
    setup = time.perf_counter() - started
    engine = getattr(backend, "engine", None)
    print(f"[{name}] start-up {setup:.1f} s (resident sources"
          f"{', engine start' if engine is not None else ', model skeleton'})")
    return {"backend": backend, "spec": spec, "setup": setup, "trials": [],
            "pgid": getattr(engine, "server_pid", None)}


def _trial(name: str, run: dict[str, Any], i: int, recipe: Any,
           args: argparse.Namespace) -> None:
    """Serve ``recipe`` and score every benchmark on it; print and keep the figures."""
    import torch

    from mmmo.evaluation import BenchmarkResult, evaluate_benchmark

    backend, spec = run["backend"], run["spec"]
    cuda = torch.device(args.device) if args.device.startswith("cuda") else None
    tasks = [spec.task(t.label) for t in spec.objectives.tasks]

    def one(task: Any) -> Any:
        return evaluate_benchmark(backend.lm(batch_size=args.batch_size), None, task,
                                  batch_size=args.batch_size)

    with Peaks(engine_pgid=run["pgid"], shm_dir=spec.compute.engine.shm_dir, cuda=cuda) as mem:
        t0 = time.perf_counter()
        info = backend.serve_recipe(recipe)
        t1 = time.perf_counter()
        if backend.concurrent:
            with ThreadPoolExecutor(len(tasks)) as pool:
                results = list(pool.map(one, tasks))
        else:
            results = [one(t) for t in tasks]
        t2 = time.perf_counter()
    bad = [f"{r.task}: {r.kind}: {r.message}" for r in results
           if not isinstance(r, BenchmarkResult)]
    if bad:
        raise SystemExit(f"[{name}] trial {i}: benchmark failed: {'; '.join(bad)}")
    timings = info["timings"]
    reload = timings.get("reload", 0.0) + timings.get("reset_prefix_cache", 0.0)
    run["trials"].append({"serve": t1 - t0, "benchmarks": t2 - t1, "total": t2 - t0,
                          "reload": reload, "merge": timings.get("merge", 0.0),
                          "scores": {r.task: r.score for r in results},
                          "request_seconds": {r.task: r.request_seconds for r in results},
                          "memory": dict(mem.peak)})
    print(f"[{name}] trial {i}: {t2 - t0:7.2f} s = serve {t1 - t0:6.2f} s (merge "
          f"{timings.get('merge', 0.0):.2f}, reload {reload:.2f}) + benchmarks "
          f"{t2 - t1:6.2f} s | {mem.line()}")


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmmo.space import SearchSpace
    from mmmo.spec import parse_spec

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmmo-eval-speed-"))
    try:
        fam = _family(args, workdir, dtype)
        data = {"name": "eval-speed", "base": fam["base"], "sources": fam["sources"],
                "merge": {"method": "dare_ties", "normalize": False, "random_seed": 0},
                "objectives": {"tasks": fam["tasks"]},
                "compute": {"device": args.device, "dtype": dtype,
                            "batch_size": args.batch_size}}
        specs = {"hf": parse_spec(data)}
        if "vllm" in backends:
            specs["vllm"] = parse_spec({**data, "compute": {
                **data["compute"], "backend": "vllm",
                "vllm": {"max_model_len": fam["max_model_len"]}}})
            from mmmo.evaluation.vllm import preflight

            preflight(specs["vllm"])
        space = SearchSpace.from_spec(specs["hf"])
        import numpy as np

        xs = np.random.default_rng(0).random((args.trials, space.dim))
        recipes = [space.decode(x) for x in xs]
        load = os.getloadavg()
        print(f"# {fam['what']}; {len(fam['tasks'])} benchmarks per trial "
              f"({', '.join(t['task'].split('/')[-1] for t in fam['tasks'])}), limits "
              f"{args.limit}/{args.gen_limit}; device {args.device}, dtype {dtype}, torch "
              f"threads {torch.get_num_threads()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        out: dict[str, Any] = {}
        try:
            for name in backends:
                out[name] = _start(name, specs[name], args, workdir / "logs")
            # trial by trial, the backends in turn: both see the same load on a shared machine
            for i, recipe in enumerate(recipes):
                for name in backends:
                    _trial(name, out[name], i, recipe, args)
        finally:
            for run in out.values():
                run.pop("backend").close()
                run.pop("spec")
        print("\n| backend | start-up s | trial s (median) | serve s | benchmarks s |")
        print("|---|---:|---:|---:|---:|")
        med = {}
        for name, res in out.items():
            later = res["trials"][1:] or res["trials"]
            med[name] = {k: statistics.median(t[k] for t in later)
                         for k in ("total", "serve", "benchmarks")}
            print(f"| {name} | {res['setup']:.1f} | {med[name]['total']:.2f} | "
                  f"{med[name]['serve']:.2f} | {med[name]['benchmarks']:.2f} |")
        if {"hf", "vllm"} <= set(out):
            ratio = med["hf"]["total"] / med["vllm"]["total"]
            same = all(a["scores"] == b["scores"] for a, b in
                       zip(out["hf"]["trials"], out["vllm"]["trials"], strict=True))
            print(f"\nratio hf / vllm (median trial, trial 0 left out when there are more): "
                  f"{ratio:.2f}x; same scores on every trial: {same}")
        print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
