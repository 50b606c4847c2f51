"""Held-out evaluation: any models (base, sources, recipes) on any tasks, as the paper's table.

Rows are models or recipes, columns are tasks plus their average. A cell that failed stays empty
(its failure is kept in ``failures``) and the row's average is then left empty too, rather than
averaged over fewer tasks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from mmmo.evaluation.benchmark import DEFAULT_BOOTSTRAP_ITERS, evaluate_benchmark
from mmmo.evaluation.lm import release_lm
from mmmo.evaluation.records import BenchmarkResult, EvalFailure, _Record
from mmmo.evaluation.tasks import TaskRegistry
from mmmo.spec import TaskSpec

__all__ = ["AVERAGE", "ScoreTable", "evaluate_models"]

AVERAGE = "average"
"""Name of the last column."""

ModelRef = tuple[Any, Any] | str | Path
"""A live ``(model, tokenizer)`` pair, or an HF model folder (or ``fixture:models/<name>``)."""


class ScoreTable(_Record):
    """Scores of models/recipes (rows) on tasks (columns), plus each row's average."""

    rows: list[str]
    columns: list[str]
    """Task labels (without the average)."""
    scores: dict[str, dict[str, float | None]]
    """Row -> task -> score (None where the evaluation failed)."""
    stderrs: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    failures: dict[str, dict[str, EvalFailure]] = Field(default_factory=dict)

    @classmethod
    def from_outcomes(cls, outcomes: Mapping[str, Sequence[BenchmarkResult | EvalFailure]],
                      columns: Sequence[str]) -> ScoreTable:
        """Build the table from per-row outcomes, each row in ``columns`` order."""
        scores: dict[str, dict[str, float | None]] = {}
        stderrs: dict[str, dict[str, float | None]] = {}
        failures: dict[str, dict[str, EvalFailure]] = {}
        for row, cells in outcomes.items():
            if len(cells) != len(columns):
                raise ValueError(f"row '{row}' has {len(cells)} cells for {len(columns)} tasks")
            scores[row], stderrs[row] = {}, {}
            for column, cell in zip(columns, cells, strict=True):
                ok = isinstance(cell, BenchmarkResult)
                scores[row][column] = cell.score if ok else None
                stderrs[row][column] = cell.stderr if ok else None
                if not ok:
                    failures.setdefault(row, {})[column] = cell
        return cls(rows=list(outcomes), columns=list(columns), scores=scores, stderrs=stderrs,
                   failures=failures)

    def average(self, row: str) -> float | None:
        """The row's mean over all tasks (None if a task failed)."""
        cells = [self.scores[row].get(c) for c in self.columns]
        if not cells or any(c is None for c in cells):
            return None
        return math.fsum(cells) / len(cells)  # type: ignore[arg-type]

    def best(self, column: str = AVERAGE) -> str | None:
        """The row with the highest score in ``column`` (or the highest average)."""
        def value(row: str) -> float:
            v = self.average(row) if column == AVERAGE else self.scores[row].get(column)
            return -math.inf if v is None else v

        return max(self.rows, key=value) if self.rows else None

    def to_dict(self) -> dict[str, Any]:
        """``{"columns": [..., "average"], "rows": [{"model", <task>..., "average"}]}``."""
        rows = []
        for row in self.rows:
            record: dict[str, Any] = {"model": row}
            record.update({c: self.scores[row].get(c) for c in self.columns})
            record[AVERAGE] = self.average(row)
            rows.append(record)
        return {"columns": [*self.columns, AVERAGE], "rows": rows}

    def to_markdown(self, *, percent: bool = True, digits: int = 2) -> str:
        """The table in markdown, scores as percentages by default; the best of each column bold.

        Failed cells show ``failed (<kind>)``; an average with a failed cell shows ``-``.
        """
        columns = [*self.columns, AVERAGE]
        scale = 100.0 if percent else 1.0
        best = {c: self.best(c) for c in columns}
        lines = ["| model | " + " | ".join(columns) + " |",
                 "|---|" + "---:|" * len(columns)]
        for row in self.rows:
            cells = []
            for c in columns:
                v = self.average(row) if c == AVERAGE else self.scores[row].get(c)
                if v is None:
                    failure = self.failures.get(row, {}).get(c)
                    cells.append(f"failed ({failure.kind})" if failure else "-")
                    continue
                text = f"{v * scale:.{digits}f}"
                cells.append(f"**{text}**" if best[c] == row and len(self.rows) > 1 else text)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def evaluate_models(models: Mapping[str, ModelRef], tasks: Sequence[TaskSpec], *,
                    batch_size: int | str = 32, device: str | None = None,
                    dtype: str = "float32", timeout_s: float | None = None,
                    registry: TaskRegistry | None = None,
                    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS) -> ScoreTable:
    """Evaluate models or recipes on (held-out) tasks: the paper-style table.

    Args:
        models: Row name -> a live ``(model, tokenizer)`` (e.g. the resident recipe) or an HF
            folder (base, sources, exports), loaded one at a time and freed after its row.
        tasks: The columns.
        batch_size: Default batch size (a task's own ``batch_size`` wins).
        device: Where loaded folders go (None/``auto``: CUDA when available, else CPU); live
            models are evaluated where they are.
        dtype: dtype of loaded folders (``float32``, ``bfloat16``, ``float16``).
        timeout_s: Time limit per benchmark.
        registry: Task registry (default: the process-wide one).
        bootstrap_iters: Bootstrap draws for metrics without a closed-form stderr.

    Returns:
        The :class:`ScoreTable`; a model that cannot be loaded fills its row with failures.
    """
    columns = [t.label for t in tasks]
    outcomes: dict[str, list[BenchmarkResult | EvalFailure]] = {}
    for row, ref in models.items():
        live = isinstance(ref, tuple)
        try:
            model, tokenizer = ref if live else _load(ref, device=device, dtype=dtype)
        except Exception as exc:  # a model that cannot be loaded is a row of failures
            line = (str(exc).strip().splitlines() or [""])[0][:300]
            outcomes[row] = [EvalFailure(kind="exception", task=c,
                                         message=f"cannot load {ref}: {type(exc).__name__}: "
                                         f"{line}") for c in columns]
            continue
        try:
            outcomes[row] = [
                evaluate_benchmark(model, tokenizer, task, batch_size=batch_size,
                                   device=None if not live else device, timeout_s=timeout_s,
                                   registry=registry, bootstrap_iters=bootstrap_iters)
                for task in tasks]
        finally:
            if not live:
                release_lm(model)
                del model
    return ScoreTable.from_outcomes(outcomes, columns)


def _load(ref: str | Path, *, device: str | None, dtype: str) -> tuple[Any, Any]:
    """Load an HF folder (or a ``fixture:models/...`` reference) onto ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(ref)
    if path.startswith("fixture:"):
        from mmmo.fixtures import resolve_ref

        path = str(resolve_ref(path))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)
