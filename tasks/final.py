"""Tasks of the search's last stage: pick, export, report."""

from __future__ import annotations

from typing import Any

from prefect import task

from mmmo.runtime import session


@task(name="pick")
def pick_recipe(study_url: str) -> dict[str, Any]:
    """Choose the final recipe from the evaluated ones under the spec's pick policy."""
    search = session(study_url).search
    chosen, why = search.pick()
    return {"number": chosen.number, "recipe_id": chosen.recipe_id, "recipe": chosen.recipe,
            "objectives": chosen.objectives, "policy": search.spec.pick.policy,
            "reason": why}


@task(name="export")
def export_recipe(study_url: str, recipe: dict[str, Any]) -> str:
    """Export a recipe (HF folder + mergekit YAML) into the study; skipped if already there."""
    from mmmo.merging.export import export, read_export

    sess = session(study_url)
    rec = sess.search.space.recipe(recipe)
    url = sess.search.store.url_of(f"exports/{rec.recipe_id}")
    done = read_export(url)
    if done is not None and done.recipe_id == rec.recipe_id:
        return done.url
    slot = sess.slot(0)
    with slot.lock:  # export materialises into the slot's resident model
        return export(rec, url, materializer=slot.materializer).url


@task(name="report")
def make_report(study_url: str) -> dict[str, Any]:
    """Write the study report (PNGs, markdown, HTML) into the study."""
    from mmmo.report import build_report

    report = build_report(session(study_url).search.store)
    return {"markdown": report.markdown, "files": report.files}
