"""Held-out evaluation: models (live or folders) x tasks + average."""

from __future__ import annotations

import json

import pytest

from mmmo.evaluation import AVERAGE, ScoreTable, evaluate_models
from mmmo.spec import TaskSpec


def test_score_table_from_folders_and_live_models(family, base_pair, registry, tmp_path):
    tasks = [TaskSpec(task=str(family.tasks["mc"]), limit=6),
             TaskSpec(task=str(family.tasks["mc2"]), name="mc_two", limit=6)]
    table = evaluate_models({"base": family.base, "src1": str(family.sources["src1"]),
                             "recipe": base_pair, "missing": str(tmp_path / "nowhere")},
                            tasks, batch_size=8, registry=registry)
    assert table.rows == ["base", "src1", "recipe", "missing"]
    assert table.columns == ["mc", "mc_two"]
    assert table.scores["base"] == table.scores["recipe"]  # the same weights
    base_avg = (table.scores["base"]["mc"] + table.scores["base"]["mc_two"]) / 2
    assert table.average("base") == pytest.approx(base_avg)
    assert table.average("missing") is None
    assert set(table.failures["missing"]) == {"mc", "mc_two"}
    assert table.failures["missing"]["mc"].message.startswith("cannot load")

    data = table.to_dict()
    assert data["columns"] == ["mc", "mc_two", AVERAGE]
    assert data["rows"][0]["model"] == "base" and data["rows"][3][AVERAGE] is None
    json.dumps(data)
    markdown = table.to_markdown()
    assert markdown.splitlines()[0] == "| model | mc | mc_two | average |"
    assert "| missing | failed (exception) | failed (exception) | - |" in markdown
    assert f"{base_avg * 100:.2f}" in markdown
    again = ScoreTable.model_validate(json.loads(json.dumps(table.model_dump(mode="json"))))
    assert again.to_dict() == data
