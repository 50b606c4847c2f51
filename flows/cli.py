"""The ``mmmo`` command line: run, resume, status, pareto, pick, export, report, demo.

Exit codes (from the error's type, :attr:`mmmo.errors.MmmoError.exit_code`): 0 ok; 2 bad input
(a one-line message, no traceback, nothing written); 3 the search finished but no trial meets
the pick's constraints (the study is kept, the nearest trials named); 1 runtime failure (the
message and where the log is).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.console import RunConsole
from flows.progress import Progress
from flows.run_api import run_api, start_api
from mmmo._env import cache_dir
from mmmo.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_NO_PICK,
    MmmoError,
    SpecError,
    StudyError,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="mm-mo: search merge recipes of fine-tuned LLMs with multi-objective "
                       "Bayesian optimisation (MM-MO), as a Prefect workflow.")
out = Console(soft_wrap=True)  # paths and result lines are never cut
err = Console(stderr=True, soft_wrap=True)

DEFAULT_STORAGE = os.environ.get("MMMO_STORAGE", "./studies")
StorageOpt = Annotated[str, typer.Option("--storage", help="Where studies live: a folder, "
                                         "file://..., s3://bucket/prefix (env MMMO_STORAGE).")]
StudyArg = Annotated[str, typer.Argument(help="The study's name.")]

class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _log_file() -> Path:
    folder = cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"mmmo-{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"


def _guard(fn: Callable[[], Any], *, log: Path | None = None) -> Any:
    """Run ``fn``; end the command as the error's type says (:attr:`MmmoError.exit_code`).

    Bad input (2): one ``error:`` line. No pick (3): one ``no pick:`` line and where the
    study is. Anything else (1): the message and the log, which gets the traceback.
    """
    try:
        return fn()
    except _Exit:
        raise
    except MmmoError as exc:
        code = exc.exit_code or EXIT_FAILURE
        if code == EXIT_BAD_INPUT:
            err.print(f"[red]error:[/red] {escape(exc.line())}", highlight=False)
            raise _Exit(code) from None
        log = _write_traceback(log)
        label = "no pick" if code == EXIT_NO_PICK else "failed"
        err.print(f"[red]{label}:[/red] {escape(exc.line())}\n  log: {escape(str(log))}",
                  highlight=False)
        raise _Exit(code) from None
    except KeyboardInterrupt:
        err.print("interrupted; resume with `mmmo resume STUDY`")
        raise _Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        log = _write_traceback(log)
        err.print(f"[red]failed:[/red] {escape(_one_line(exc))}\n  log: {escape(str(log))}",
                  highlight=False)
        raise _Exit(EXIT_FAILURE) from None


def _write_traceback(log: Path | None) -> Path:
    log = log or _log_file()
    with log.open("a") as fh:
        fh.write(traceback.format_exc())
    return log


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if isinstance(exc, MmmoError) else f"{type(exc).__name__}: {first}"


def _quiet_prefect(console: RunConsole) -> None:
    """Prefect's logs go to the run's log (and the API, for the UI), not to the console."""
    import prefect.logging.configuration as prefect_logging
    import prefect.main  # noqa: F401 - importing it (re)sets Prefect's logging, root level too

    if not prefect_logging.PROCESS_LOGGING_CONFIG:
        prefect_logging.setup_logging()
    console.attach()  # the root logger back at INFO, with the run's log
    console.route()


# --------------------------------------------------------------------------------- run


def _run_search(spec: str, study: str | None, storage: str | None,
                max_iterations: int | None, verbose: bool) -> dict[str, Any]:
    """Check every input, then run the flow; library output goes to the run's log only."""
    log = _log_file()
    with RunConsole(log, (out, err), verbose=verbose) as console:
        return _checked_run(console, log, spec, study, storage, max_iterations)


def _checked_run(console: RunConsole, log: Path, spec: str, study: str | None,
                 storage: str | None, max_iterations: int | None) -> dict[str, Any]:
    from mmmo.spec import load_spec

    if max_iterations is not None and max_iterations < 0:
        _guard(lambda: _bad_max_iterations(max_iterations), log=log)
    loaded = _guard(lambda: load_spec(spec), log=log)
    if study or storage:
        loaded = _guard(lambda: loaded.with_overrides(study=study, storage=storage), log=log)
    from mmmo.preflight import check_inputs

    # everything checkable is checked here, before Prefect starts and anything is written
    warned = _guard(lambda: check_inputs(loaded, storage=True), log=log)
    console.route()
    for warning in warned:
        err.print(f"[yellow]warning:[/yellow] {escape(str(warning))}", highlight=False)
    server = _guard(lambda: start_api(log), log=log)  # starts while the flow is imported
    try:
        _quiet_prefect(console)
        from flows.search import merge_search

        if server is not None:
            from flows.local_server import wait_healthy

            _guard(lambda: wait_healthy(server), log=log)
        with run_api(server):
            err.print(f"study [bold]{loaded.study_name}[/bold] at {escape(loaded.storage)}: "
                      f"{loaded.optimizer.budget} trials, strategy "
                      f"{loaded.optimizer.strategy}; log: {log}", highlight=False)

            def search() -> dict[str, Any]:
                with Progress(loaded, err):  # stops the bar before any error is printed
                    return merge_search(spec=spec, study=loaded.study_name,
                                        storage=loaded.storage, max_iterations=max_iterations)

            result = _guard(search, log=log)
    finally:
        if server is not None:
            server.stop()
    _print_result(result)
    return result


def _bad(field: str, problem: str, value: Any, fix: str, *, has_value: bool = True) -> None:
    raise SpecError(field, problem, value=value, fix=fix, has_value=has_value)


def _bad_max_iterations(value: int) -> None:
    raise SpecError("--max-iterations", "must be >= 0", value=value,
                    fix="give 0 or more iterations, or leave the option out")


def _print_result(result: dict[str, Any]) -> None:
    if not result.get("complete"):
        out.print(f"stopped early; resume with: mmmo resume {result['study'].rsplit('/', 1)[-1]}")
        return
    pick = result["pick"]
    objs = ", ".join(f"{k}={_fmt(v)}" for k, v in pick["objectives"].items())
    out.print(f"[bold green]done[/bold green]: pick = trial {pick['number']} ({objs})")
    out.print(f"  why: {pick['reason']}")
    out.print(f"  export: {result['export']}")
    out.print(f"  report: {result['report'].get('report.html')}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


@app.command()
def run(spec: Annotated[str, typer.Argument(help="Search spec YAML: a path or URL.")],
        study: Annotated[str | None, typer.Option(help="Study name (overrides the spec).")]
        = None,
        storage: Annotated[str | None, typer.Option(help="Storage URL (overrides the spec).")]
        = None,
        max_iterations: Annotated[int | None, typer.Option(
            help="Stop after this many iterations (resume later).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                              help="Show Prefect's logs.")] = False) -> None:
    """Run (or resume) a search. Example: [bold]mmmo run examples/fixture.yaml --study demo[/bold]"""
    _run_search(spec, study, storage, max_iterations, verbose)


@app.command()
def resume(study: StudyArg, storage: StorageOpt = DEFAULT_STORAGE,
           verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Resume an interrupted study with its stored spec. Example: [bold]mmmo resume demo[/bold]"""
    store = _store(study, storage)
    _run_search(store.url_of("spec.yaml"), study, storage, None, verbose)


@app.command()
def demo(storage: StorageOpt = DEFAULT_STORAGE,
         study: Annotated[str, typer.Option(help="Study name.")] = "fixture-demo",
         verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """The end-to-end demo: a search on the bundled offline fixture family.

    Example: [bold]mmmo demo[/bold] (10-20 minutes on 2 CPU cores)
    """
    spec = Path(__file__).resolve().parents[1] / "examples" / "fixture.yaml"
    if not spec.is_file():
        err.print(f"error: the demo spec is missing ({spec}); run from a checkout of mm-mo")
        raise typer.Exit(2)
    _run_search(str(spec), study, storage, None, verbose)


# --------------------------------------------------------------------------------- inspect


def _store(study: str, storage: str) -> Any:
    from mmmo.study import StudyStore

    store = _guard(lambda: StudyStore(storage, study))
    _guard(store.load_spec)
    return store


@app.command()
def status(study: StudyArg, storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """Progress, best so far and failures of a study. Example: [bold]mmmo status demo[/bold]"""
    from mmmo.report import study_view

    view = _guard(lambda: study_view(_store(study, storage)))
    trials = view.trials
    failed = [t for t in trials if t.status == "failed"]
    lease = view_lease(study, storage)
    out.print(f"study [bold]{study}[/bold]: {len(trials)} / {view.spec.optimizer.budget} "
              f"trials, {len(failed)} failed; {lease}")
    table = Table("objective", "best", "trial")
    for j, name in enumerate(view.names):
        col = view.values[:, j]
        if len(col) and (col == col).any():
            k = int(_nanargmax(col))
            table.add_row(name, _fmt(view.natural[k, j]), str(trials[k].number))
    out.print(table)
    for t in failed:
        out.print(f"  trial {t.number} failed: {(t.error or {}).get('message', '')}")
    if view.final.get("pick"):
        out.print(f"pick: trial {view.final['pick']['number']}; export: {view.final['export']}")


def _nanargmax(col: Any) -> int:
    import numpy as np

    return int(np.nanargmax(col))


def view_lease(study: str, storage: str) -> str:
    """The lease state, in words."""
    from mmmo.study import StudyStore

    lease = StudyStore(storage, study).read_lease()
    if lease is None:
        return "not running"
    return "running" if not lease.is_stale() else "interrupted (stale lease)"


@app.command()
def pareto(study: StudyArg, storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """The Pareto front of a study as a table. Example: [bold]mmmo pareto demo[/bold]"""
    from mmmo.report import study_view, trial_rows

    view = _guard(lambda: study_view(_store(study, storage)))
    header, rows = trial_rows(view)
    table = Table(*header, title=f"Pareto front of {study} ({int(view.pareto.sum())} trials)")
    for row, on_front in zip(rows, view.pareto, strict=True):
        if on_front:
            table.add_row(*row)
    out.print(table)


@app.command("pick")
def pick_cmd(study: StudyArg, storage: StorageOpt = DEFAULT_STORAGE,
             policy: Annotated[str | None, typer.Option(
                 help="primary | knee | weighted (default: the spec's).")] = None) -> None:
    """Which trial the pick policy chooses, and why. Example: [bold]mmmo pick demo --policy knee[/bold]"""
    from mmmo.search import Search
    from mmmo.space import SearchSpace

    if policy not in (None, "primary", "knee", "weighted"):
        _guard(lambda: _bad("--policy", "is not a pick policy", policy,
                            "use primary, knee or weighted"))
    store = _store(study, storage)
    spec = store.load_spec()
    search = Search(spec, store, SearchSpace.from_spec(spec))
    chosen, why = _guard(lambda: search.pick(policy=policy))
    objs = ", ".join(f"{k}={_fmt(v)}" for k, v in chosen.objectives.items())
    out.print(f"trial {chosen.number} (recipe {chosen.recipe_id[:12]}): {objs}\n  why: {why}")


@app.command()
def export(study: StudyArg,
           trial: Annotated[int | None, typer.Argument(help="Trial number (default: the pick).")]
           = None,
           out_url: Annotated[str, typer.Option("--out", help="Destination folder or URL.")]
           = "",
           storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """Export a trial's recipe as an HF folder + mergekit YAML.

    Example: [bold]mmmo export demo 17 --out ./merged[/bold]
    """
    if not out_url:
        _guard(lambda: _bad("--out", "is missing", None, "give a destination folder or URL",
                            has_value=False))
    from mmmo.merging.export import export as do_export
    from mmmo.search import Search
    from mmmo.space import SearchSpace

    store = _store(study, storage)
    spec = store.load_spec()
    search = Search(spec, store, SearchSpace.from_spec(spec))

    def chosen() -> Any:
        if trial is None:
            return search.pick()[0]
        found = [t for t in store.trials() if t.number == trial]
        if not found:
            raise StudyError("trial", f"study '{study}' has no trial {trial}", value=trial,
                             fix=f"see `mmmo status {study}` for its trials")
        return found[0]

    record = _guard(chosen)
    recipe = search.space.recipe(record.recipe)
    info = _guard(lambda: do_export(recipe, out_url,
                                    trust_remote_code=spec.compute.trust_remote_code))
    out.print(f"exported trial {record.number} to {info.url}")


@app.command()
def report(study: StudyArg, storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """Write the study's report (PNG + HTML) and print where it is. Example: [bold]mmmo report demo[/bold]"""
    from mmmo.report import build_report

    rep = _guard(lambda: build_report(_store(study, storage)))
    for name, url in rep.files.items():
        out.print(f"{name}: {url}")


def main() -> None:
    """Console-script entry point."""
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code in this mode
    except _Exit as exc:
        sys.exit(exc.code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
