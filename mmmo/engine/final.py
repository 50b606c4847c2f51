"""The search's last stage, on any executor: pick, score the final table, export, report."""

from __future__ import annotations

from typing import Any

__all__ = ["finish"]


def finish(search: Any, executor: Any) -> dict[str, Any]:
    """Pick the recipe, score base, sources, baselines and the pick, export it, report.

    Cells already in the result store are re-used and a complete export is kept, so a run
    killed during this stage finishes it on resume without redoing what was done.

    Returns:
        ``{"study", "complete", "pick", "export", "report" (files), "markdown", "table"}``.
    """
    url = search.store.url
    picked = executor.call("pick", url)
    rows, columns = search.final_rows(picked), search.final_columns()
    cells = [{"row": row, "recipe": recipe, "model": None if recipe is not None else row,
              "task": name, "docs": search.final_docs(name).model_dump(mode="json")}
             for row, recipe in rows for name in columns]
    outcomes = executor.cells(cells)
    scores = {(c["row"], c["task"]): o["score"] for c, o in zip(cells, outcomes, strict=True)
              if isinstance(o, dict) and o.get("status") == "ok"}
    table = search.score_table([r for r, _ in rows], columns, scores)
    export = executor.export(picked["recipe"])
    search.write_final(picked, table, export)
    report = executor.call("report", url)
    return {"study": url, "complete": True, "pick": picked, "export": export,
            "report": report["files"], "markdown": report["markdown"], "table": table}
