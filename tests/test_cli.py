"""The ``mmmo`` CLI: every verb, exit codes 0/2/1, one-line errors, the HTML report in Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "resume", "status", "pareto", "pick", "export", "report", "demo")


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``mmmo ARGS`` in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)


def _spec(folder: Path, storage: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "name": "cli",
        "base": {"path": "fixture:models/base"},
        "sources": [{"path": f"fixture:models/{s}"} for s in ("dbl", "rev", "srt")],
        "objectives": {"tasks": [{"task": f"fixture:tasks/{s}.yaml", "limit": 12}
                                 for s in ("dbl", "rev", "srt")]},
        "optimizer": {"strategy": "random", "n_init": 4, "iterations": 0},
        "storage": str(storage),
        "compute": {"device": "cpu"},
    }
    data.update(changes)
    path = folder / "cli.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 4-trial study (run without Prefect) and its report."""
    from mmmo.engine import run_inline
    from mmmo.report import build_report
    from mmmo.search import Search
    from mmmo.spec import load_spec

    root = tmp_path_factory.mktemp("cli")
    storage = root / "studies"
    spec = load_spec(_spec(root, storage))
    search = Search.open(spec)
    assert run_inline(search)
    report = build_report(search.store)
    return {"root": root, "storage": str(storage), "name": spec.study_name, "report": report}


def test_help_of_every_command_has_an_example() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        text = cli(command, "--help").stdout
        assert "Example" in text, command


def test_bad_spec_exits_2_with_one_line(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tmp_path / "s", merge={"method": "dare_tie"})
    result = cli("run", str(spec))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {spec}: merge.method: is not a method of mergekit's task-arithmetic family "
        "(got 'dare_tie'); fix: did you mean 'dare_ties'? use one of linear, task_arithmetic, "
        "ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della, della_linear"]


def test_non_homologous_source_exits_2_before_any_work(tmp_path: Path) -> None:
    from tests.support.synthetic import build_random_family

    fam = build_random_family(tmp_path / "other", hidden_size=32, layers=1, n_sources=1)
    spec = _spec(tmp_path, tmp_path / "s", sources=[{"path": "fixture:models/dbl"},
                                                    {"name": "alien", "path": str(fam.sources[0])}])
    started = time.time()
    result = cli("run", str(spec))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "alien" in lines[0]
    assert not (tmp_path / "s").exists()  # nothing half-written
    assert time.time() - started < 120


def test_unknown_study_exits_2(tmp_path: Path) -> None:
    result = cli("status", "nope", "--storage", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: study 'nope' does not exist at {tmp_path} (no spec.yaml); fix: start it with "
        "`mmmo run SPEC --study NAME`, or check --storage"]


def test_status_pareto_pick(study: dict[str, Any]) -> None:
    status = cli("status", study["name"], "--storage", study["storage"])
    assert status.returncode == 0, status.stderr
    assert f"study {study['name']}: 4 / 4 trials, 0 failed; not running" in status.stdout
    for name in ("dbl", "rev", "srt", "sparsity"):
        assert name in status.stdout
    pareto = cli("pareto", study["name"], "--storage", study["storage"])
    assert pareto.returncode == 0 and "Pareto front of cli" in pareto.stdout
    for policy in ("primary", "knee", "weighted"):
        pick = cli("pick", study["name"], "--storage", study["storage"], "--policy", policy)
        assert pick.returncode == 0, pick.stderr
        if policy == "weighted":  # the spec gives no weights: all objectives count equally
            assert "weights equal" in pick.stdout
        assert pick.stdout.startswith("trial ") and "why:" in pick.stdout
    bad = cli("pick", study["name"], "--storage", study["storage"], "--policy", "best")
    assert bad.returncode == 2 and "fix: use primary, knee or weighted" in bad.stderr


def test_export_and_its_failure_exit_code(study: dict[str, Any], tmp_path: Path) -> None:
    from mmmo.merging.export import read_export

    out = tmp_path / "merged"
    done = cli("export", study["name"], "2", "--out", str(out), "--storage", study["storage"])
    assert done.returncode == 0, done.stderr
    info = read_export(out)
    assert info is not None and (out / "mergekit.yaml").is_file()
    failed = cli("export", study["name"], "--out", "/dev/null/x", "--storage", study["storage"])
    assert failed.returncode == 1
    assert "failed:" in failed.stderr and "log: " in failed.stderr
    assert "Traceback" not in failed.stderr
    log = Path(failed.stderr.split("log: ", 1)[1].strip().split()[0])
    assert "Traceback" in log.read_text()


def test_report_command_writes_png_and_html(study: dict[str, Any]) -> None:
    result = cli("report", study["name"], "--storage", study["storage"])
    assert result.returncode == 0, result.stderr
    for name in ("pareto.png", "hypervolume.png", "report.html", "report.md"):
        assert f"{name}: " in result.stdout
    html = Path(study["storage"]) / study["name"] / "reports" / "report.html"
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    png = Path(study["storage"]) / study["name"] / "reports" / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


def test_html_report_opens_in_headless_chromium(study: dict[str, Any], tmp_path: Path,
                                                free_port: int) -> None:
    browser = _chromium()
    assert browser, "Chromium is missing: scripts/setup.sh installs it (apt-get install chromium)"
    html = Path(study["storage"]) / study["name"] / "reports" / "report.html"
    port = free_port
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-quic", "--no-first-run", "--disable-sync",
                             "--disable-background-networking", "--disable-component-update",
                             f"--user-data-dir={tmp_path / 'profile'}",
                             f"--remote-debugging-port={port}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = asyncio.run(_open_page(port, html.as_uri(), tmp_path / "shot.png"))
    finally:
        proc.kill()
        proc.wait()
    assert result["exceptions"] == [] and result["errors"] == [], result
    assert result["images"] == [True, True], result  # both PNGs decoded
    assert result["title"] == f"mm-mo {study['name']}"
    assert result["tables"] >= 1
    assert (tmp_path / "shot.png").stat().st_size > 10_000


async def _open_page(port: int, url: str, shot: Path) -> dict[str, Any]:
    """Load ``url`` over the DevTools protocol; collect errors, image states, a screenshot."""
    import websockets

    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            if pages:
                break
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError("Chromium's DevTools endpoint did not come up")
        await asyncio.sleep(0.3)
    out: dict[str, Any] = {"exceptions": [], "errors": []}
    async with websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
        ids = iter(range(1, 10_000))

        async def call(method: str, **params: Any) -> dict[str, Any]:
            mid = next(ids)
            await ws.send(json.dumps({"id": mid, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("method") == "Runtime.exceptionThrown":
                    out["exceptions"].append(msg["params"]["exceptionDetails"]["text"])
                elif msg.get("method") == "Log.entryAdded" and \
                        msg["params"]["entry"]["level"] == "error":
                    out["errors"].append(msg["params"]["entry"]["text"])
                elif msg.get("method") == "Runtime.consoleAPICalled" and \
                        msg["params"]["type"] == "error":
                    out["errors"].append(str(msg["params"]["args"]))
                if msg.get("id") == mid:
                    return msg.get("result", {})

        for domain in ("Page", "Runtime", "Log"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=url)
        for _ in range(100):
            state = await call("Runtime.evaluate", expression="document.readyState",
                               returnByValue=True)
            if state["result"]["value"] == "complete":
                break
            await asyncio.sleep(0.1)
        probe = await call("Runtime.evaluate", returnByValue=True, expression=(
            "({title: document.title, tables: document.querySelectorAll('table').length,"
            " images: Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)})"))
        out.update(probe["result"]["value"])
        shot_data = await call("Page.captureScreenshot", format="png")
        shot.write_bytes(base64.b64decode(shot_data["data"]))
    return out
