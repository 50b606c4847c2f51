"""Warm start: the trials of earlier studies, told to the optimizer before the first ask.

``optimizer.warm_start: [<storage>/<study>, ...]`` names donor studies. A donor must have
searched the same thing: the same models (fingerprints), merge method and settings, search
space (dimensions and bounds) and objective tasks (content, metric, documents, few-shot,
generation settings); the first difference is a one-line error before any work. Its trials
(complete and failed) are copied, as they were, into the new study's ``warm.json`` when the
study is created, so the study does not change when a donor does, and nothing of a donor is
evaluated again. They are told to the optimizer before the study's own trials and count for
the Pareto front and the pick (with negative trial numbers: ``-1`` is the first donor trial),
not for the budget.
"""

from __future__ import annotations

from typing import Any

from mmmo.errors import SpecError

__all__ = ["check_donors", "donor_trials", "snapshot"]

WARM_FILE = "warm.json"


def _store(url: str) -> Any:
    from mmmo.study import StudyStore

    storage, _, name = url.rstrip("/").rpartition("/")
    return StudyStore(storage or ".", name)


def _what_differs(ours: Any, theirs: Any) -> str | None:
    """The first search-defining difference between two specs, in words (None: none)."""
    from mmmo.evaluation.tasks import task_fingerprint
    from mmmo.space import SearchSpace

    a, b = SearchSpace.from_spec(ours), SearchSpace.from_spec(theirs)
    if a.fingerprints != b.fingerprints:
        return (f"models (fingerprints {b.fingerprints} vs {a.fingerprints}: other models, "
                "revisions or order)")
    if theirs.merge.method != ours.merge.method:
        return f"merge method ({theirs.merge.method} vs {ours.merge.method})"
    if theirs.merge.model_dump() != ours.merge.model_dump():
        return "merge settings (merge: parameters, layer_groups, normalize, seed, rounding)"
    if b.names != a.names or b.bounds.tolist() != a.bounds.tolist():
        return "search space (its dimensions or bounds)"
    mine, other = ours.objectives, theirs.objectives
    if [t.label for t in other.tasks] != [t.label for t in mine.tasks]:
        return (f"objective tasks ({[t.label for t in other.tasks]} vs "
                f"{[t.label for t in mine.tasks]})")
    if other.sparsity != mine.sparsity:
        return "sparsity objective"
    for t_other, t_mine in zip(other.tasks, mine.tasks, strict=True):
        keys = ("metric", "filter", "limit", "sample_seed", "num_fewshot",
                "apply_chat_template", "gen_kwargs", "direction")
        for key in keys:
            if getattr(t_other, key) != getattr(t_mine, key):
                return (f"{key} of objective {t_mine.label} ({getattr(t_other, key)!r} vs "
                        f"{getattr(t_mine, key)!r})")
        if task_fingerprint(t_other.task) != task_fingerprint(t_mine.task):
            return f"task content of objective {t_mine.label} (its YAML or data changed)"
    return None


def check_donors(spec: Any) -> None:
    """Raise a one-line SpecError if a donor study is missing or searched something else."""
    from mmmo.errors import StudyError

    for i, url in enumerate(spec.optimizer.warm_start):
        field = f"optimizer.warm_start[{i}]"
        try:
            donor = _store(url).load_spec()
        except StudyError:
            raise SpecError(field, "names no study", value=url, fix="give <storage>/<study> "
                            "of a finished or running study") from None
        differs = _what_differs(spec, donor)
        if differs is not None:
            raise SpecError(field, f"searched a different {differs}", value=url,
                            fix="warm-start only from studies of the same models, method, "
                            "search space and objective tasks, or remove it")


def snapshot(spec: Any, store: Any) -> None:
    """Copy the donors' trials into the study's ``warm.json`` (once, when it is created)."""
    if not spec.optimizer.warm_start or store.exists(WARM_FILE):
        return
    records = []
    for url in spec.optimizer.warm_start:
        donor = _store(url)
        for t in sorted(donor.trials(), key=lambda t: (t.order if t.order is not None
                                                       else t.number, t.number)):
            records.append({"from": f"{donor.url}#{t.number}", **t.model_dump(mode="json")})
    for k, record in enumerate(records):
        record["number"], record["order"] = -(k + 1), None
    store.write_json(WARM_FILE, records)


def donor_trials(store: Any) -> list[Any]:
    """The study's warm-start trials (negative numbers), in the order they are told."""
    from mmmo.study import TrialRecord

    if not store.exists(WARM_FILE):
        return []
    return [TrialRecord.model_validate({k: v for k, v in r.items() if k != "from"})
            for r in store.read_json(WARM_FILE)]
