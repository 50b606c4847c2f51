"""Reading a spec: YAML (duplicate keys refused) from any fsspec URL, validation errors as one
line naming the field and the fix."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import fsspec
import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from mmmo.errors import SpecError
from mmmo.spec.base import FieldProblem
from mmmo.spec.root import SearchSpec


def load_spec(path_or_url: str | Path) -> SearchSpec:
    """Read and validate a spec from a local path or any fsspec URL (s3://, file://, ...).

    Raises:
        SpecError: one line naming the field, the bad value and the fix.
    """
    ref = str(path_or_url)
    try:
        with fsspec.open(ref, "r", encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise SpecError("spec", "file not found", value=ref,
                        fix="check the path or URL of the spec YAML") from None
    except IsADirectoryError:
        raise SpecError("spec", "is a folder, not a YAML file", value=ref,
                        fix="give the path of the spec's YAML file") from None
    except (OSError, ValueError) as exc:
        raise SpecError("spec", f"cannot be read: {exc}".splitlines()[0], value=ref,
                        fix="check the URL and its credentials") from None
    from mmmo import yamlio

    try:
        data = yamlio.load(text, source=ref)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError("spec", f"is not valid YAML{where}", has_value=False, source=ref,
                        fix="fix the YAML syntax there") from None
    base_dir = Path(ref).expanduser().resolve().parent if "://" not in ref else None
    if ref.startswith("file://"):
        base_dir = Path(ref[len("file://"):]).expanduser().resolve().parent
    data = _default_name(data, ref)
    return parse_spec(data, source=ref, base_dir=base_dir)


def _default_name(data: Any, ref: str) -> Any:
    if isinstance(data, dict) and "name" not in data:
        stem = Path(ref.split("://")[-1]).stem
        return {"name": stem, **data}
    return data


def parse_spec(data: Any, *, source: str | None = None,
               base_dir: Path | None = None) -> SearchSpec:
    """Validate a spec given as a mapping; errors become one-line :class:`SpecError`."""
    if data is None:
        raise SpecError("spec", "is empty", has_value=False, source=source,
                        fix="write the spec's fields (start from examples/fixture.yaml)")
    if not isinstance(data, dict):
        raise SpecError("spec", "must be a YAML mapping of fields", value=type(data).__name__,
                        fix="start from examples/fixture.yaml", source=source)
    try:
        return SearchSpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise _one_line(exc, source) from None


def _one_line(exc: ValidationError, source: str | None) -> SpecError:
    """The first validation error of ``exc`` as a SpecError with a fix."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    problem = err.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):
        if problem.field:
            loc += problem.field.split(".")
        return SpecError(_loc(loc), problem.problem, value=problem.value,
                         has_value=problem.has_value, fix=problem.fix, source=source)
    kind = err["type"]
    field = _loc(loc)
    if kind == "missing":
        return SpecError(field, "is required", has_value=False, source=source,
                         fix=f"add '{loc[-1]}' (see examples/fixture.yaml)")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else "remove it; "
        return SpecError(field, "is not a known field", has_value=False, source=source,
                         fix=f"{hint}allowed here: {', '.join(allowed)}")
    problem, fix = _phrase(kind, err.get("ctx") or {}, err["msg"])
    return SpecError(field, problem, value=err.get("input"), has_value="input" in err,
                     fix=fix, source=source)


_TYPE_FIX = {
    "int": "write a whole number, e.g. 10",
    "float": "write a number, e.g. 0.5",
    "bool": "write true or false",
    "string": "write a string (quote it in YAML)",
    "dict": "write a mapping of key: value",
    "model": "write a mapping of key: value",
    "list": "write a list, e.g. [a, b]",
    "tuple": "write a list [low, high]",
}
_BOUND = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
          "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}


def _phrase(kind: str, ctx: dict[str, Any], msg: str) -> tuple[str, str]:
    """(problem, fix) for one of pydantic's built-in error types."""
    if kind in _BOUND:
        op, key = _BOUND[kind]
        limit = ctx.get(key)
        return f"must be {op} {limit}", f"set a value {op} {limit}"
    if kind == "literal_error":
        return "is not an allowed value", "use " + str(ctx.get("expected", "an allowed value"))
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return f"needs at least {n} item(s)", f"list at least {n}"
    for prefix, fix in _TYPE_FIX.items():
        if kind.startswith(prefix + "_") or kind == prefix + "_type":
            return "has the wrong type", fix
    return msg.split(",")[0].rstrip(".").lower(), "see examples/fixture.yaml for this field"


def _loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in ("float", "tuple[float, float]", "int", "constrained-int"):
            continue  # pydantic's union-branch labels add nothing for the user
        else:
            out += f".{part}" if out else str(part)
    return out or "spec"


def _allowed_keys(loc: list[Any]) -> list[str]:
    """Field names of the spec model at ``loc`` (for 'did you mean' hints)."""
    model: Any = SearchSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _inner_model(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None
