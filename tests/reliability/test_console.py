"""The console of ``mmmo run`` holds mm-mo's own lines only: exactly, for a bad input and for a
short search with a user-written task YAML that omits ``aggregation``/``higher_is_better`` (lm-eval
warns about both on every load). Library warnings and logs go to the run's log file instead.

Both run the real command in a subprocess (so that C-level output and child processes count),
without PREFECT_API_URL (the command starts its own Prefect API for the search).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def user_task(folder: Path) -> Path:
    """A task YAML as a user writes it: over the fixture's dbl data, no aggregation given."""
    from mmmo.fixtures import resolve_ref

    path = folder / "tasks" / "mydbl.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""task: my_dbl
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{resolve_ref('fixture:tasks/dbl.jsonl')}"
test_split: test
output_type: multiple_choice
doc_to_text: prompt
target_delimiter: ""
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
""")
    return path


def mmmo(*args: str, cwd: Path, mark: Any) -> tuple[subprocess.CompletedProcess[str], int]:
    """``mmmo ARGS`` in a subprocess without a configured Prefect API; (result, its pid)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "TQDM_DISABLE",
                        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")}
    env.update(mark.env, PYTHONPATH=str(ROOT), COLUMNS="100", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def normalise(text: str, tmp: Path) -> str:
    """Volatile parts replaced: the case folder, the log path, the bar, values and ids."""
    text = text.replace(str(tmp), "<tmp>")
    text = re.sub(r"log: \S+\.log", "log: <log>", text)
    text = re.sub(r"[━╸╺ ]{10,}", " <bar> ", text)
    text = re.sub(r"=(-?[\d.e+]+)", "=<v>", text)
    text = re.sub(r"\((\d[\d.e+]*)\)", "(<v>)", text)
    text = re.sub(r"trial \d+", "trial <n>", text)
    text = re.sub(r"/[0-9a-f]{16}\b", "/<id>", text)
    return "\n".join(line.rstrip() for line in text.splitlines())


def run_log(pid: int) -> str:
    """The log file of the ``mmmo`` process ``pid``."""
    from mmmo._env import cache_dir

    found = sorted((cache_dir() / "logs").glob(f"mmmo-*-{pid}.log"))
    assert found, f"no log of process {pid}"
    return found[-1].read_text()


def test_a_bad_input_shows_one_line_and_the_warnings_go_to_the_log(
        tmp_path: Path, tiny_spec: Any, write_spec: Any, run_mark: Any) -> None:
    """The storage is checked after the tasks were loaded (and lm-eval warned)."""
    (tmp_path / "f.txt").write_text("x")
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(
        str(tmp_path / "f.txt" / "studies"),
        objectives={"tasks": [{"task": str(user_task(tmp_path)), "limit": 4}]}))
    done, pid = mmmo("run", str(spec), cwd=tmp_path, mark=run_mark)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert normalise(done.stderr, tmp_path) == (
        "error: storage: <tmp>/f.txt is a file, not a folder (got '<tmp>/f.txt/studies'); "
        "fix: choose a folder for the studies")
    log = run_log(pid)
    assert "metric acc is defined, but aggregation is not" in log
    assert "higher_is_better is not" in log


@pytest.mark.slow
def test_a_short_search_shows_only_mmmo_lines(tmp_path: Path, tiny_spec: Any,
                                              write_spec: Any, run_mark: Any) -> None:
    """...and leaves no process behind (its Prefect API server stopped with it)."""
    spec = write_spec(tmp_path / "spec.yaml", tiny_spec(
        str(tmp_path / "studies"),
        objectives={"tasks": [{"task": str(user_task(tmp_path)), "limit": 4},
                              {"task": "fixture:tasks/rev.yaml", "limit": 4}]}))
    done, pid = mmmo("run", str(spec), cwd=tmp_path, mark=run_mark)
    assert done.returncode == 0, done.stderr
    assert not run_mark.wait_gone(5.0)
    assert normalise(done.stderr, tmp_path) == (
        "study tiny at <tmp>/studies: 2 trials, strategy random; log: <log>\n"
        "trials <bar> 2/2")
    assert normalise(done.stdout, tmp_path) == (
        "done: pick = trial <n> (mydbl=<v>, rev=<v>, sparsity=<v>)\n"
        "  why: best mydbl (<v>) of 2 complete trials (ties broken by Pareto dominance)\n"
        "  export: <tmp>/studies/tiny/exports/<id>\n"
        "  report: <tmp>/studies/tiny/reports/report.html")
    log = run_log(pid)
    assert "aggregation is not" in log  # lm-eval's warnings: in the log, not on the console
    assert "prefect.flow_runs" in log and "Finished in state Completed" in log
    assert "Error logging to API" not in log  # Prefect's logs were sent before its API stopped
