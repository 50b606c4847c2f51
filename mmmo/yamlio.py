"""YAML that refuses a key given twice: specs and task YAMLs a user wrote.

PyYAML silently keeps the last of two equal keys (a spec with two ``optimizer:`` blocks runs
the second). :func:`load` and :func:`check` compose the document first and refuse any mapping
that repeats a key, naming the key's path and both lines::

    spec.yaml: optimizer: is given twice (lines 12 and 30); fix: keep one

Checking works on the node graph, before anything is constructed, so it accepts any tag
(lm-eval's ``!function``); :func:`load` constructs with ``yaml.SafeLoader`` (or another loader).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmmo.errors import SpecError

__all__ = ["DuplicateKeyError", "check", "check_file", "load"]


class DuplicateKeyError(SpecError):
    """A mapping gives a key twice; ``field`` is the key's path, ``lines`` both lines (1-based)."""

    def __init__(self, path: str, lines: tuple[int, int], *, source: str | None = None) -> None:
        self.key_path, self.lines = path, lines
        super().__init__(path, f"is given twice (lines {lines[0]} and {lines[1]})",
                         fix="keep one", source=source)


def _key_text(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    return yaml.serialize(node).strip().replace("\n", " ")[:40]


def _walk(node: yaml.Node, path: str, source: str | None, seen: set[int]) -> None:
    if id(node) in seen:  # anchors and aliases share nodes (and may form cycles)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat
                _walk(value, path, source, seen)
                continue
            text = _key_text(key)
            sub = f"{path}.{text}" if path else text
            line = key.start_mark.line + 1
            ident = (key.tag, text)
            if ident in first:
                raise DuplicateKeyError(sub, (first[ident], line), source=source)
            first[ident] = line
            _walk(value, sub, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{path}[{i}]", source, seen)


def _compose(text: str, loader: type[yaml.SafeLoader]) -> tuple[Any, yaml.SafeLoader]:
    inst = loader(text)
    return inst.get_single_node(), inst


def check(text: str, *, source: str | None = None) -> None:
    """Raise :class:`DuplicateKeyError` if any mapping of the YAML ``text`` repeats a key.

    Any tag is accepted (nothing is constructed). Syntax errors raise ``yaml.YAMLError``.
    """
    node, inst = _compose(text, yaml.SafeLoader)
    try:
        if node is not None:
            _walk(node, "", source, set())
    finally:
        inst.dispose()


def check_file(path: str | Path, *, source: str | None = None) -> None:
    """:func:`check` on a file (``source`` defaults to its name)."""
    path = Path(path)
    check(path.read_text(encoding="utf-8"), source=source or path.name)


def load(text: str, *, source: str | None = None,
         loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """Parse one YAML document with ``loader`` (default safe), refusing repeated keys.

    Raises:
        DuplicateKeyError: a mapping repeats a key (one line: its path, both lines, the fix).
        yaml.YAMLError: the text is not valid YAML.
    """
    node, inst = _compose(text, loader)
    try:
        if node is None:
            return None
        _walk(node, "", source, set())
        return inst.construct_document(node)
    finally:
        inst.dispose()
