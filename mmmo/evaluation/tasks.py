"""Task references resolved once per process, loaded task objects pooled.

A ``TaskSpec.task`` is one of

- a task YAML path (loaded by path, so two YAMLs that share a ``task:`` name never collide; a
  YAML that defines a *group* gets its folder added to the task index, for its children);
- ``fixture:tasks/<name>.yaml``, resolved to a path by ``mmmo.fixtures.resolve_ref``;
- an lm-eval task or group name: looked up in the folders given to :class:`TaskRegistry` first,
  then in lm-eval's built-in index, which is only built (about 10 s) when a spec names one.

Loaded task objects (their datasets read, their configs parsed) are kept in a pool keyed by the
settings that change a task object (reference, ``num_fewshot``, ``gen_kwargs``), so a trial does
not reload its tasks. A pooled object is checked out by one evaluation at a time; a concurrent
evaluation of the same task gets a second object (loaded then, then pooled too).

Which documents are scored (seeded subsamples, slices of one ranking) is :mod:`.docs`; content
hashes of task references are :mod:`.fingerprint` (both re-exported here). For a group a
limit applies to each leaf task, as lm-eval's own ``limit`` does.
"""

from __future__ import annotations

import copy
import difflib
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmmo.errors import SpecError
from mmmo.evaluation.docs import DocRange, docs_hash, select_docs
from mmmo.evaluation.fingerprint import AnyTagLoader, ref_path, task_fingerprint
from mmmo.spec import TaskSpec

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

__all__ = [
    "DocRange",
    "averages_documents",
    "task_sizes",
    "LoadedTask",
    "ResolvedTask",
    "TaskRegistry",
    "default_registry",
    "docs_hash",
    "select_docs",
    "task_fingerprint",
    "validate_tasks",
]


@dataclass(frozen=True)
class ResolvedTask:
    """Where a task reference points: a YAML file, or a name in lm-eval's index."""

    ref: str
    """The reference as the spec wrote it."""
    name: str
    """The lm-eval task or group name."""
    path: Path | None = None
    """The YAML file (None for a name from an index)."""
    group: bool = False
    builtin: bool = False
    """True when the name comes from lm-eval's built-in index."""

    @property
    def load_spec(self) -> str:
        """What :meth:`TaskManager.load` is given: a task's YAML path, else the name.

        Groups load by name (lm-eval 0.4.13 cannot load a group YAML by path), from the index
        of the YAML's folder.
        """
        return str(self.path) if self.path is not None and not self.group else self.name


@dataclass
class LoadedTask:
    """A checked-out task object (or group), its leaf tasks and their document counts."""

    resolved: ResolvedTask
    task_dict: dict[str, Any]
    """What :meth:`TaskManager.load` returned: ``tasks``, ``groups``, ``group_map``."""
    n_docs: dict[str, int] = field(default_factory=dict)
    """Leaf task name -> its number of evaluation documents."""

    @property
    def leaves(self) -> dict[str, Any]:
        """Leaf task name -> lm-eval Task object."""
        return self.task_dict["tasks"]


# --------------------------------------------------------------------------------- registry


class TaskRegistry:
    """Resolves task references, owns the lm-eval TaskManager and pools loaded tasks.

    Build one per process (:func:`default_registry`) and share it: every method is thread-safe.

    Args:
        include_paths: Folders of task YAMLs whose task names a spec may use bare.
    """

    def __init__(self, *, include_paths: Sequence[str | Path] = ()) -> None:
        self._lock = threading.RLock()
        self._include = [Path(p).expanduser().resolve() for p in include_paths]
        self._folders: set[Path] = set(self._include)
        self._manager: TaskManager | None = None
        self._manager_key: tuple[frozenset[Path], bool] | None = None
        self._defaults = False
        self._resolved: dict[str, ResolvedTask] = {}
        self._pool: dict[tuple[str, int | None, str], list[LoadedTask]] = {}

    # ------------------------------------------------------------------------ resolution

    def resolve(self, ref: str) -> ResolvedTask:
        """Resolve a ``TaskSpec.task`` reference (cached).

        Raises:
            SpecError: the reference names no YAML file and no known task (one line, with a
                close match when there is one).
        """
        with self._lock:
            hit = self._resolved.get(ref)
            if hit is None:
                hit = self._resolved[ref] = self._resolve(ref)
            return hit

    def _resolve(self, ref: str) -> ResolvedTask:
        path = ref_path(ref)
        if path is not None:
            return self._resolve_path(ref, path)
        if self._include:
            entry = self.manager(defaults=False).task_index.get(ref)
            if entry is not None:
                return self._from_entry(ref, entry, builtin=False)
        index = self.manager(defaults=True).task_index
        entry = index.get(ref)
        if entry is None:
            close = difflib.get_close_matches(ref, list(index), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SpecError("task", "is not an lm-eval task, group or task YAML", value=ref,
                            fix=f"{hint}check `lm_eval ls tasks`, or give a task .yaml path")
        return self._from_entry(ref, entry, builtin=True)

    def _resolve_path(self, ref: str, path: Path) -> ResolvedTask:
        if not path.is_file():
            raise SpecError("task", f"no task YAML at {path}", value=ref,
                            fix="fix the path, or use an lm-eval task name")
        from lm_eval.tasks._yaml_loader import load_yaml

        _check_duplicate_keys(path, ref)
        try:
            cfg = load_yaml(path, resolve_func=False)
        except Exception as exc:  # a YAML error, an include cycle, not a mapping
            raise SpecError("task", f"cannot read task YAML {path.name}: "
                            f"{_first_line(exc)}", value=ref,
                            fix="fix the YAML (it needs a 'task:' or 'group:' key)") from None
        if isinstance(cfg.get("group"), str):
            name, group = cfg["group"], True
        elif isinstance(cfg.get("task"), str):
            name, group = cfg["task"], False
        else:
            raise SpecError("task", f"{path.name} defines no task", value=ref,
                            fix="add a 'task: <name>' (or 'group: <name>') key to the YAML")
        if not group:
            return ResolvedTask(ref=ref, name=name, path=path)
        self._folders.add(path.parent)  # the group and its children load through the index
        indexed = self.manager().task_index.get(name)
        where = getattr(indexed, "yaml_path", None)
        if where is None or Path(where).resolve() != path:
            raise SpecError("task", f"group name '{name}' of {path.name} is also defined "
                            f"in {where}", value=ref, fix="give the group a unique name")
        return ResolvedTask(ref=ref, name=name, path=path, group=True)

    @staticmethod
    def _from_entry(ref: str, entry: Any, *, builtin: bool) -> ResolvedTask:
        from lm_eval.tasks._index import Kind

        return ResolvedTask(ref=ref, name=entry.name, path=None,
                            group=entry.kind in (Kind.GROUP, Kind.TAG), builtin=builtin)

    def manager(self, *, defaults: bool | None = None) -> TaskManager:
        """The shared TaskManager, (re)built only when new folders or the built-ins are needed.

        Args:
            defaults: Index lm-eval's built-in tasks (~10 s, once). None keeps the current choice.
        """
        from lm_eval.tasks import TaskManager

        with self._lock:
            self._defaults = self._defaults or bool(defaults)
            key = (frozenset(self._folders), self._defaults)
            if self._manager is None or self._manager_key != key:
                self._manager = TaskManager(include_path=sorted(str(p) for p in self._folders)
                                            or None, include_defaults=self._defaults)
                self._manager_key = key
            return self._manager

    # --------------------------------------------------------------------------- loading

    def validate(self, specs: Iterable[TaskSpec], *, field: str = "tasks",
                 load: bool = True) -> None:
        """Check task references (and, with ``load``, datasets, metrics and filters) up front.

        Args:
            specs: The tasks a run will evaluate.
            field: Spec field they come from, for messages (e.g. ``objectives.tasks``).
            load: Also load each task (reads its dataset, offline) and check that it reports
                ``metric`` under ``filter``, and that ``limit`` selects at least one document.

        Raises:
            SpecError: one line naming ``field[i].task`` (or ``.metric``/``.filter``).
        """
        for i, spec in enumerate(specs):
            where = f"{field}[{i}]"
            try:
                self.resolve(spec.task)
            except SpecError as exc:
                raise SpecError(f"{where}.task", exc.problem, value=spec.task,
                                fix=exc.fix) from None
            if load:
                self._check_loaded(spec, where)

    def _check_loaded(self, spec: TaskSpec, where: str) -> None:
        try:
            with self.checkout(spec) as loaded:
                metrics, filters = set(), set()
                for task in loaded.leaves.values():
                    metrics |= set(task.aggregation())
                    filters |= {getattr(f, "name", "none") for f in getattr(task, "_filters", [])}
                n_total = sum(loaded.n_docs.values())
        except SpecError:
            raise
        except Exception as exc:
            raise SpecError(f"{where}.task", f"cannot be loaded: {_first_line(exc)}",
                            value=spec.task, fix="check its dataset is available offline "
                            "(HF_HOME cache or local data_files)") from None
        if spec.metric not in metrics:
            raise SpecError(f"{where}.metric", "is not a metric of this task",
                            value=spec.metric, fix=f"use one of {sorted(metrics)}")
        if filters and spec.filter not in filters:
            raise SpecError(f"{where}.filter", "is not a filter of this task",
                            value=spec.filter, fix=f"use one of {sorted(filters)}")
        if n_total == 0:
            raise SpecError(f"{where}.task", "has no evaluation documents", value=spec.task,
                            fix="check the task's test/validation split")

    def load(self, spec: TaskSpec) -> LoadedTask:
        """Load a fresh task object for ``spec`` (with its config overrides applied)."""
        resolved = self.resolve(spec.task)
        with self._lock:
            manager = self.manager(defaults=resolved.builtin or None)
            task_dict = dict(manager.load([resolved.load_spec]))
        loaded = LoadedTask(resolved=resolved, task_dict=task_dict)
        for name, task in loaded.leaves.items():
            _apply_overrides(task, spec)
            loaded.n_docs[name] = len(task.eval_docs)
        return loaded

    @contextmanager
    def checkout(self, spec: TaskSpec) -> Iterator[LoadedTask]:
        """Borrow a loaded task object for ``spec``: from the pool, else freshly loaded.

        The object is returned to the pool afterwards (also after an error), so the next trial
        re-uses its parsed config and dataset. One object serves one evaluation at a time.
        """
        resolved = self.resolve(spec.task)
        key = (resolved.load_spec, spec.num_fewshot,
               json.dumps(spec.gen_kwargs, sort_keys=True, default=str))
        with self._lock:
            free = self._pool.setdefault(key, [])
            loaded = free.pop() if free else None
        if loaded is None:
            loaded = self.load(spec)
        try:
            for task in loaded.leaves.values():
                task.set_fewshot_seed(seed=_FEWSHOT_SEED)
            yield loaded
        finally:
            with self._lock:
                self._pool.setdefault(key, []).append(loaded)

    def clear(self) -> None:
        """Drop pooled task objects (the TaskManager and resolutions stay)."""
        with self._lock:
            self._pool.clear()


_FEWSHOT_SEED = 1234
"""lm-eval's default ``fewshot_random_seed`` (re-applied before every evaluation)."""


def _apply_overrides(task: Any, spec: TaskSpec) -> None:
    """Apply ``gen_kwargs`` and ``num_fewshot`` to a task object as ``simple_evaluate`` does."""
    if spec.gen_kwargs and task.get_config("output_type") == "generate_until":
        current = copy.deepcopy(task.get_config("generation_kwargs") or {})
        task.set_config(key="generation_kwargs", value={**current, **spec.gen_kwargs})
    if spec.num_fewshot is not None:
        if task.get_config("num_fewshot") != 0:  # lm-eval never overrides an explicit 0
            task.set_config(key="num_fewshot", value=spec.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)


def _check_duplicate_keys(path: Path, ref: str, seen: set[Path] | None = None) -> None:
    """Refuse a key given twice in a user's task YAML or the YAMLs it includes (lm-eval, like
    PyYAML, would silently keep the last one). Tags such as ``!function`` are accepted."""
    import yaml as _yaml

    from mmmo.yamlio import DuplicateKeyError, check

    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen or not path.is_file():
        return
    seen.add(path)
    try:
        text = path.read_text(encoding="utf-8")
        check(text)
        cfg = _yaml.load(text, Loader=AnyTagLoader)  # noqa: S506 - tags are not run
    except DuplicateKeyError as exc:
        raise SpecError("task", f"task YAML {path.name}: {exc.key_path} is given twice "
                        f"(lines {exc.lines[0]} and {exc.lines[1]})", value=ref,
                        fix="keep one") from None
    except (OSError, UnicodeError, _yaml.YAMLError):
        return  # lm-eval's own loader reports it, with the line
    includes = cfg.get("include") if isinstance(cfg, dict) else None
    for inc in includes if isinstance(includes, list) else [includes] if includes else []:
        if isinstance(inc, str):
            inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
            _check_duplicate_keys(inc_path, ref, seen)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


_DEFAULT: TaskRegistry | None = None
_DEFAULT_LOCK = threading.Lock()


def default_registry() -> TaskRegistry:
    """The process-wide registry (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = TaskRegistry()
        return _DEFAULT


def task_sizes(spec: TaskSpec, *, registry: TaskRegistry | None = None) -> dict[str, int]:
    """Documents of each leaf task of ``spec`` (loads the task, offline)."""
    with (registry or default_registry()).checkout(spec) as loaded:
        return dict(loaded.n_docs)


def averages_documents(spec: TaskSpec, *, registry: TaskRegistry | None = None) -> bool:
    """Whether every leaf task aggregates ``spec.metric`` as a mean over documents (results on
    disjoint document slices can then be combined exactly)."""
    from lm_eval.api.metrics import mean

    with (registry or default_registry()).checkout(spec) as loaded:
        return all(t.aggregation().get(spec.metric) is mean for t in loaded.leaves.values())


def validate_tasks(specs: Iterable[TaskSpec], *, field: str = "tasks", load: bool = True,
                   registry: TaskRegistry | None = None) -> None:
    """Check every task reference before any expensive work (see :meth:`TaskRegistry.validate`).

    Raises:
        SpecError: one line naming the bad field, the value and the fix.
    """
    (registry or default_registry()).validate(specs, field=field, load=load)
