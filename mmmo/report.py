"""The study report: Pareto front, hypervolume per evaluation, trial table, paper-style table.

Everything is derived from the study store (trials + ``final.json``), so a report can be
rebuilt at any time, also for a search that is still running. Outputs: PNGs, a markdown
summary (also used as the Prefect artifact) and one self-contained HTML page (PNGs inlined).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmmo.optimization import hypervolume_curve, infer_ref_point, pareto_mask
from mmmo.spec import SearchSpec
from mmmo.study import StudyStore, TrialRecord

__all__ = ["Report", "StudyView", "build_report", "study_view"]


@dataclass
class StudyView:
    """A study's trials as arrays, in the order they finished (their ``order``)."""

    spec: SearchSpec
    names: list[str]
    trials: list[TrialRecord]
    values: np.ndarray
    """``n x m`` maximised values (NaN for failed trials)."""
    final: dict[str, Any] = field(default_factory=dict)

    @property
    def natural(self) -> np.ndarray:
        """``n x m`` natural-scale values (scores as measured, sparsity as an L1 norm)."""
        return self.values * self.signs

    @property
    def signs(self) -> np.ndarray:
        """+1 for maximised objectives, -1 for minimised ones (natural = sign * maximised)."""
        out = [1.0 if o.direction == "maximize" else -1.0 for o in self.spec.objectives.tasks]
        if self.spec.objectives.sparsity.enabled:
            out.append(-1.0)
        return np.asarray(out)

    @property
    def pareto(self) -> np.ndarray:
        """Which trials are Pareto-optimal."""
        return pareto_mask(self.values) if len(self.values) else np.zeros(0, dtype=bool)

    def hypervolume(self) -> tuple[list[float], np.ndarray | None]:
        """Hypervolume after each evaluation, and the reference point it is measured from."""
        if not np.isfinite(self.values).all(axis=1).any():
            return [0.0] * len(self.values), None
        ref = infer_ref_point(self.values)
        return hypervolume_curve(self.values, ref), ref


def study_view(store: StudyStore) -> StudyView:
    """Load a study's spec, trials and final pick (if any) from its store."""
    spec = store.load_spec()
    names = spec.objective_names()
    from mmmo.warmstart import donor_trials

    trials = sorted(store.trials(), key=lambda t: (t.number if t.order is None else t.order,
                                                   t.number))
    if spec.optimizer.warm_start:  # the donors' trials count for the front: shown first
        trials = [*donor_trials(store), *trials]
    values = np.array([[np.nan if v is None else v for v in t.values] or [np.nan] * len(names)
                       for t in trials], dtype=float).reshape(len(trials), len(names))
    final = store.read_json("final.json") if store.exists("final.json") else {}
    return StudyView(spec=spec, names=names, trials=trials, values=values, final=final)


def _label(name: str, spec: SearchSpec) -> str:
    if spec.objectives.sparsity.enabled and name == spec.objectives.sparsity.name:
        return f"{name}: L1 |merged - base| (lower is better)"
    task = next(t for t in spec.objectives.tasks if t.label == name)
    better = "higher" if task.direction == "maximize" else "lower"
    return f"{name}: {task.metric} ({better} is better)"


def plot_pareto(view: StudyView) -> bytes:
    """PNG: every pair of objectives; all trials, the Pareto front, and the pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nat, front = view.natural, view.pareto
    pairs = list(itertools.combinations(range(len(view.names)), 2)) or [(0, 0)]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    pick = view.final.get("pick", {}).get("number")
    index = {t.number: i for i, t in enumerate(view.trials)}
    for ax, (i, j) in zip(axes.flat, pairs, strict=False):
        ok = np.isfinite(nat).all(axis=1)
        ax.scatter(nat[ok & ~front, i], nat[ok & ~front, j], s=22, c="#9aa5b1",
                   label="evaluated", zorder=2)
        ax.scatter(nat[front, i], nat[front, j], s=40, c="#1f6feb", edgecolor="black",
                   linewidth=0.5, label="Pareto front (all objectives)", zorder=3)
        if pick in index:
            k = index[pick]
            ax.scatter([nat[k, i]], [nat[k, j]], s=260, marker="*", c="#d1242f",
                       edgecolor="black", linewidth=0.7, label="pick", zorder=4)
        ax.set_xlabel(_label(view.names[i], view.spec))
        ax.set_ylabel(_label(view.names[j], view.spec))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(f"Study {view.spec.study_name}: objectives, pairwise "
                 f"({len(view.trials)} trials)", y=0.995, fontsize=13)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.965), ncol=3,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _png(fig)


def plot_hypervolume(view: StudyView) -> bytes:
    """PNG: dominated hypervolume after each evaluation in the order trials finished (batch
    schedule: with iteration boundaries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, _ = view.hypervolume()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = np.arange(1, len(curve) + 1)
    ax.step(xs, curve, where="post", color="#1f6feb", linewidth=2)
    ax.plot(xs, curve, "o", color="#1f6feb", markersize=3)
    batch = view.spec.optimizer.schedule == "batch"
    iters = [t.iteration for t in view.trials]
    for k in range(1, len(iters)):
        if batch and iters[k] != iters[k - 1]:
            ax.axvline(k + 0.5, color="#9aa5b1", linestyle="--", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluations, in the order trials finished"
                  + ("; dashed lines = iteration boundaries" if batch else
                     " (asynchronous slots)"))
    ax.set_ylabel("hypervolume (maximised objectives)")
    ax.set_title("Dominated hypervolume per evaluation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def trial_rows(view: StudyView) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the trial table (recipe parameters, objectives, status)."""
    params = _param_names(view.trials)
    header = ["finished", "trial", "iter", "status", *view.names, *params, "recipe id"]
    front = view.pareto
    rows = []
    for k, t in enumerate(view.trials):
        objs = [_fmt(t.objectives.get(n)) for n in view.names]
        flat = t.params
        mark = "*" if front[k] else ""
        done = "-" if t.order is None else str(t.order + 1)
        rows.append([done, f"{t.number}{mark}", str(t.iteration), t.status, *objs,
                     *[_fmt(flat.get(p)) for p in params], t.recipe_id[:12]])
    return header, rows


def _param_names(trials: list[TrialRecord]) -> list[str]:
    names: list[str] = []
    for t in trials:
        for key in t.params:
            if key not in names:
                names.append(key)
    return names


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def score_table_rows(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the final score table; a trial's objective cells show its confirmed
    score and, in brackets, the search's estimate."""
    columns = list(table.get("columns", []))
    estimates = table.get("estimates", {})
    rows = []
    for name, vals in table.get("rows", {}).items():
        est = estimates.get(name, {})
        rows.append([str(name), *[_fmt(vals.get(c)) + (f" ({_fmt(est[c])})" if c in est
                                                       else "") for c in columns]])
    return ["model / recipe", *columns], rows


def score_table_note(view: StudyView) -> str:
    """Which of the final table's numbers are estimates and which are confirmed."""
    table = view.final.get("table", {})
    docs = table.get("documents", {})
    objectives = [t.label for t in view.spec.objectives.tasks]
    counts = ", ".join(f"{t} {docs[t]}" for t in objectives if t in docs)
    heldout = ", ".join(f"{h.label} {docs[h.label]}" for h in view.spec.heldout
                        if h.label in docs)
    if table.get("confirmed"):
        text = ("Objective columns are **confirmed** scores, on documents that no search "
                f"subsample used ({counts}); in brackets, the search's **estimate** of a trial "
                "(its subsample score, which chose it: biased upwards).")
    else:
        text = ("Objective columns are the search's **estimates** (`confirm.enabled: false`: "
                f"the same documents that chose the pick; {counts}).")
    pick = view.final.get("pick", {})
    if pick.get("by") == "confirmed":
        text += " The pick was chosen among these trials by their confirmed scores."
    if heldout:
        text += f" Held-out columns: tasks no search used ({heldout} documents)."
    return text


@dataclass
class Report:
    """What :func:`build_report` wrote: URLs inside the study store, and the markdown."""

    markdown: str
    files: dict[str, str]


def build_report(store: StudyStore) -> Report:
    """Write ``reports/`` (PNGs, report.md, report.html) into the study and return them."""
    view = study_view(store)
    pngs = {"pareto.png": plot_pareto(view), "hypervolume.png": plot_hypervolume(view)} \
        if view.trials else {}
    md = render_markdown(view)
    page = render_html(view, pngs)
    files = {}
    for name, data in {**pngs, "report.md": md.encode(), "report.html": page.encode()}.items():
        store.write_bytes(f"reports/{name}", data)
        files[name] = store.url_of(f"reports/{name}")
    return Report(markdown=md, files=files)


def _summary_lines(view: StudyView) -> list[str]:
    done = sum(t.status == "complete" for t in view.trials)
    failed = sum(t.status == "failed" for t in view.trials)
    curve, ref = view.hypervolume()
    lines = [f"- trials: {len(view.trials)} of {view.spec.optimizer.budget} "
             f"({done} complete, {failed} failed); strategy `{view.spec.optimizer.strategy}`, "
             f"method `{view.spec.merge.method}`",
             f"- Pareto front: {int(view.pareto.sum())} trials"]
    if curve:
        lines.append(f"- hypervolume: {curve[-1]:.4g} (after {len(curve)} evaluations; "
                     f"reference point {np.round(ref, 4).tolist() if ref is not None else '-'})")
    pick = view.final.get("pick")
    if pick:
        objs = ", ".join(f"{k} {_fmt(v)}" for k, v in pick.get("objectives", {}).items())
        lines.append(f"- pick: trial {pick['number']} (recipe `{pick['recipe_id'][:12]}`), "
                     f"{objs}; why: {pick.get('reason', '')}")
    if view.final.get("export"):
        lines.append(f"- export: {view.final['export']}")
    return lines


def render_markdown(view: StudyView) -> str:
    """The report as markdown (the Prefect UI's final artifact)."""
    parts = [f"# mm-mo study `{view.spec.study_name}`", "", *_summary_lines(view), ""]
    if view.final.get("table"):
        parts += ["## Scores: base, sources, baselines, the pick and its candidates", "",
                  score_table_note(view), "", _md_table(*score_table_rows(view.final["table"])),
                  ""]
    if view.trials:
        front_rows = [r for r, f in zip(trial_rows(view)[1], view.pareto, strict=True) if f]
        parts += ["## Pareto front", "", _md_table(trial_rows(view)[0], front_rows), ""]
        curve, _ = view.hypervolume()
        if view.spec.optimizer.schedule == "batch":
            per_iter: dict[int, float] = {}
            for t, hv in zip(view.trials, curve, strict=True):
                per_iter[t.iteration] = hv
            parts += ["## Hypervolume per iteration", "",
                      _md_table(["iteration", "hypervolume"],
                                [[str(k), f"{v:.4g}"] for k, v in per_iter.items()]), ""]
        else:
            parts += ["## Hypervolume, in the order trials finished", "",
                      _md_table(["finished", "trial", "hypervolume"],
                                [[str(k + 1), str(t.number), f"{hv:.4g}"] for k, (t, hv) in
                                 enumerate(zip(view.trials, curve, strict=True))]), ""]
        parts += ["## All trials, in the order they finished (* = on the Pareto front)", "",
                  _md_table(*trial_rows(view))]
    return "\n".join(parts) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#1f2328}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #d0d7de;margin:.5rem 0}"""


def render_html(view: StudyView, pngs: dict[str, bytes]) -> str:
    """One self-contained HTML page (images inlined as data URIs, no scripts)."""
    parts = [f"<h1>mm-mo study <code>{html.escape(view.spec.study_name)}</code></h1>", "<ul>"]
    parts += [f"<li>{html.escape(line[2:])}</li>" for line in _summary_lines(view)]
    parts.append("</ul>")
    if view.final.get("table"):
        note = html.escape(score_table_note(view)).replace("**", "")
        parts += ["<h2>Scores: base, sources, baselines, the pick and its candidates</h2>",
                  f"<p>{note}</p>", _html_table(*score_table_rows(view.final["table"]))]
    for name, title in (("pareto.png", "Pareto front (pairwise projections)"),
                        ("hypervolume.png", "Hypervolume per evaluation")):
        if name in pngs:
            data = base64.b64encode(pngs[name]).decode()
            parts += [f"<h2>{title}</h2>", f'<img alt="{title}" src="data:image/png;base64,'
                      f'{data}">']
    if view.trials:
        parts += ["<h2>All trials (* = on the Pareto front)</h2>",
                  _html_table(*trial_rows(view))]
    body = "\n".join(parts)
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mm-mo "
            f"{html.escape(view.spec.study_name)}</title><style>{_CSS}</style></head>"
            f"<body>{body}</body></html>")
