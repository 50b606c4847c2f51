"""Tasks of the search's last stage: pick, export, report."""

from __future__ import annotations

from typing import Any

from prefect import task

from mmmo.runtime import session


@task(name="pick")
def pick_recipe(study_url: str) -> dict[str, Any]:
    """Choose the final recipe from the evaluated ones under the spec's pick policy."""
    return session(study_url).search.pick_summary()


@task(name="export")
def export_recipe(study_url: str, recipe: dict[str, Any]) -> str:
    """Export a recipe (HF folder + mergekit YAML) into the study; skipped if already there."""
    from mmmo.runtime import export_recipe as export

    sess = session(study_url)
    return export(sess.search, sess.slot(0), recipe)


@task(name="report")
def make_report(study_url: str) -> dict[str, Any]:
    """Write the study report (PNGs, markdown, HTML) into the study."""
    from mmmo.report import build_report

    report = build_report(session(study_url).search.store)
    return {"markdown": report.markdown, "files": report.files}
