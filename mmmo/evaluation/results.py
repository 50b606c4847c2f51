"""lm-eval's output turned into a :class:`~mmmo.evaluation.records.BenchmarkResult`: the spec's
metric (a group falls back to a document-weighted mean), its standard error, the evaluated
documents and their per-document scores, everything JSON-safe."""

from __future__ import annotations

import math
from typing import Any

from mmmo.evaluation.docs import docs_hash
from mmmo.evaluation.records import BenchmarkResult, EvalFailure, finite_or_none
from mmmo.evaluation.tasks import LoadedTask
from mmmo.spec import TaskSpec

__all__ = ["result_of"]


def result_of(out: dict[str, Any], loaded: LoadedTask, task: TaskSpec,
            samples: dict[str, list[int]], *, batch_size: int | str, seconds: float,
            timing: Any, keep_samples: bool = False) -> BenchmarkResult | EvalFailure:
    """Pick the spec's metric out of lm-eval's output (a group falls back to a doc-weighted mean)."""
    name = loaded.resolved.name
    key, se_key = f"{task.metric},{task.filter}", f"{task.metric}_stderr,{task.filter}"
    entry = (out.get("groups") or {}).get(name) or out["results"].get(name) or {}
    counts = {leaf: int(n["effective"]) for leaf, n in (out.get("n-samples") or {}).items()
              if leaf in loaded.leaves}
    if key in entry:
        score, stderr = entry[key], finite_or_none(entry.get(se_key))
    else:
        score, stderr = _pooled(out["results"], counts, key, se_key)
    n_docs = sum(counts.values())
    if score is None:
        available = sorted(k for k in entry if "," in k and "_stderr" not in k)
        return EvalFailure(kind="exception", task=task.label, batch_size=batch_size,
                           seconds=seconds, message=f"lm-eval reported no '{key}' for "
                           f"{name}; available: {available}")
    if not isinstance(score, int | float) or not math.isfinite(score):
        return EvalFailure(kind="nan", task=task.label, batch_size=batch_size, seconds=seconds,
                           message=f"{key} of {name} is {score} on {n_docs} documents")
    indices = {leaf: samples[leaf] for leaf in sorted(samples)} or None
    raw = {k: out.get(k) for k in ("results", "groups", "n-samples", "n-shot",
                                    "higher_is_better", "versions") if out.get(k)}
    if keep_samples and out.get("samples"):
        raw["samples"] = {leaf: [_trim_sample(x) for x in rows]
                          for leaf, rows in out["samples"].items()}
    return BenchmarkResult(
        doc_scores=_doc_scores(out.get("samples") or {}, loaded, task),
        task=task.label, metric=task.metric, filter=task.filter, score=float(score),
        stderr=stderr, n_docs=n_docs, n_total=sum(loaded.n_docs.values()),
        doc_indices=indices, docs_hash=docs_hash(indices), batch_size=batch_size,
        seconds=seconds, request_seconds=timing.request_seconds,
        forward_seconds=timing.forward_seconds, raw=_json_safe(raw))


def _doc_scores(samples: dict[str, list[dict[str, Any]]], loaded: LoadedTask,
                task: TaskSpec) -> dict[str, list[list[float]]] | None:
    """``{leaf: [[doc_id, value], ...]}`` of the metric, when every leaf averages it."""
    from lm_eval.api.metrics import mean

    out: dict[str, list[list[float]]] = {}
    for leaf, obj in loaded.leaves.items():
        if obj.aggregation().get(task.metric) is not mean:
            return None
        rows = [r for r in samples.get(leaf, []) if r.get("filter", "none") == task.filter]
        try:
            out[leaf] = sorted([float(r["doc_id"]), float(r[task.metric])] for r in rows)
        except (KeyError, TypeError, ValueError):
            return None
    return out


def _trim_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A logged sample without the document, prompts and hashes."""
    keep = {"doc_id", "target", "filter", "filtered_resps", *sample.get("metrics", [])}
    return {k: v for k, v in sample.items() if k in keep}


def _pooled(results: dict[str, Any], counts: dict[str, int], key: str,
            se_key: str) -> tuple[float | None, float | None]:
    """Doc-weighted mean of leaf scores, and its stderr, for a group lm-eval did not aggregate."""
    found = {leaf: results[leaf] for leaf in counts if key in results.get(leaf, {})}
    if not found or len(found) != len(counts):
        return None, None
    total = sum(counts.values())
    if total == 0:
        return None, None
    score = sum(counts[leaf] * float(found[leaf][key]) for leaf in found) / total
    ses = [finite_or_none(found[leaf].get(se_key)) for leaf in found]
    if any(se is None for se in ses):
        return score, None
    var = sum((counts[leaf] / total) ** 2 * se ** 2 for leaf, se in zip(found, ses, strict=True))
    return score, math.sqrt(var)


def _json_safe(value: Any) -> Any:
    """``value`` with every non-JSON leaf turned into a string and non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        number = float(value)  # numpy scalars
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None
