"""Files and folders a user names on a command line: YAML files read safely, output folders checked writable.

Every problem is a :class:`zsl.errors.UserError` whose message is one sentence starting with ``where`` (the flag
and/or the file, as the caller names it) and ending with the fix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from zsl.errors import UserError

MAX_YAML_VALUES = 100_000  # values of a document with every alias expanded; far above any space or config file


def load_yaml(text: str, where: str, loader: type = yaml.SafeLoader) -> Any:
    """The document in ``text`` (safe: no Python tags); refuses invalid YAML, alias bombs and alias cycles."""
    parser = loader(text)
    try:
        node = parser.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return parser.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" near line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: not valid YAML{line} ({problem}): fix the syntax there.") from None
    except RecursionError:
        raise UserError(f"{where}: nested too deeply to read: flatten the file.") from None
    finally:
        parser.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    """UserError when aliases make the document expand beyond MAX_YAML_VALUES values or refer to themselves."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise UserError(f"{where}: a YAML alias refers to a collection that contains it (a cycle): write the "
                            "values out instead.")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        open_nodes.discard(key)
        if total > MAX_YAML_VALUES:
            raise UserError(f"{where}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values (an alias "
                            "bomb?): write the values out or use fewer aliases.")
        sizes[key] = total
        return total

    size(root)


def read_yaml_file(path: str | os.PathLike, where: str, loader: type = yaml.SafeLoader) -> tuple[str, Any]:
    """(text, document) of the UTF-8 YAML file ``path``; UserError (prefixed ``where``) when it cannot be used."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{where}: cannot read it ({err.strerror}): pass the path of an existing YAML file.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{where}: byte 0x{data[err.start]:02x} on line {line} is not UTF-8 text: save the file as "
                        "UTF-8.") from None
    return text, load_yaml(text, where, loader)


def check_writable_folder(folder: str | os.PathLike, where: str) -> None:
    """UserError unless ``folder`` is, or can be made, a folder this process can write (nothing is left behind)."""
    folder = Path(folder).expanduser()
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{where}: {existing} is a file, not a folder: pass a folder.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".zsl-write-test-", dir=existing))
    except OSError as err:
        raise UserError(f"{where}: cannot write in {existing} ({err.strerror}): pass a folder you can write.") from None
