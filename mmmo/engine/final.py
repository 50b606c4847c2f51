"""The search's last stage, on any executor: pick, confirm, score the final table, export."""

from __future__ import annotations

from typing import Any

__all__ = ["finish"]


def finish(search: Any, executor: Any) -> dict[str, Any]:
    """Pick the recipe (and its front candidates), score the final table on the documents the
    search did not use (:mod:`mmmo.final_table`), re-pick by confirmed scores if the spec
    asks, export the pick, write the report.

    Cells already in the result store are re-used and a complete export is kept, so a run
    killed during this stage finishes it on resume without redoing what was done.

    Returns:
        ``{"study", "complete", "pick", "export", "report" (files), "markdown", "table"}``.
    """
    url = search.store.url
    picked = executor.call("pick", url)
    rows, columns = search.final_rows(picked), search.final_columns()
    docs = {name: search.final_docs(name).model_dump(mode="json") for name in columns}
    cells = [{"row": row, "recipe": recipe, "model": None if recipe is not None else row,
              "task": name, "docs": docs[name]} for row, recipe in rows for name in columns]
    outcomes = executor.cells(cells)
    scores, documents = {}, {}
    for cell, out in zip(cells, outcomes, strict=True):
        if isinstance(out, dict) and out.get("status") == "ok":
            scores[cell["row"], cell["task"]] = out["score"]
            documents.setdefault(cell["task"], out.get("n_docs"))
    confirmed = {c["number"]: {t: scores[f"trial {c['number']}", t]
                               for t in search.task_objectives
                               if (f"trial {c['number']}", t) in scores}
                 for c in [picked, *picked.get("candidates", [])]}
    picked = search.pick_confirmed(picked, confirmed)
    table = search.final_table(picked, scores, documents)
    export = executor.export(picked["recipe"])
    search.write_final(picked, table, export)
    report = executor.call("report", url)
    return {"study": url, "complete": True, "pick": picked, "export": export,
            "report": report["files"], "markdown": report["markdown"], "table": table}
