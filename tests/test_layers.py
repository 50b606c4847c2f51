"""The core library is Prefect-free: importing every module of ``mmmo`` loads no Prefect."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import importlib, json, pkgutil, sys
import mmmo
names = sorted(m.name for m in pkgutil.walk_packages(mmmo.__path__, "mmmo."))
for name in names:
    importlib.import_module(name)
layers = sorted({m.split(".")[0] for m in sys.modules} & {"prefect", "flows", "tasks"})
print(json.dumps({"modules": names, "layers": layers}))
"""


def test_the_core_imports_no_prefect_and_no_orchestration_layer() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"mmmo.engine.steps", "mmmo.engine.dask", "mmmo.search", "mmmo.study",
            "mmmo.merging.materialize",
            "mmmo.evaluation.benchmark", "mmmo.optimization.acquisition"} <= set(found["modules"])
    assert found["layers"] == []


def test_the_command_line_lives_in_the_orchestration_layer() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mmmo"]
    assert script.value == "flows.cli:main"


def test_no_core_module_imports_the_orchestration_layer_even_lazily() -> None:
    import ast
    from pathlib import Path

    import mmmo

    offenders = []
    for path in sorted(Path(mmmo.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level \
                else []
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in ("prefect", "flows", "tasks")]
    assert offenders == []
