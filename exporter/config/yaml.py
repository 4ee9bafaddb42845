"""Read configuration YAML with `!env`, `!file` and `${VAR}` interpolation; no validation."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "Problem",
    "format_location",
    "load_yaml",
    "parse_yaml",
    "read_yaml",
]

_INTERPOLATION = re.compile(r"\$(\$)?\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})?")
_ENV_TAG_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class ConfigError(Exception):
    """Invalid configuration; `problems` lists each one as "<location>: <message>"."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Problem:
    """A problem at a dotted location; `value_missing` when the value was replaced by None."""

    location: str
    message: str
    value_missing: bool = False

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


def format_location(parts: Sequence[str | int]) -> str:
    """Join location parts as "a.b[0].c"; keys that are not plain names are quoted."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f'["{part}"]' if text else f'"{part}"'
    return text


class _Loader(yaml.SafeLoader):
    """Safe loader that resolves `!env`, `!file` and `${VAR}` and records problems."""

    def __init__(self, text: str, name: str, base_dir: Path, environ: Mapping[str, str]) -> None:
        super().__init__(text)
        self.name = name
        self.base_dir = base_dir
        self.environ = environ
        self.locations: dict[int, str] = {}
        self.problems: list[Problem] = []

    def add_problem(self, node: yaml.Node, message: str, value_missing: bool = True) -> None:
        """Record a problem at the node's dotted location and line."""
        line = node.start_mark.line + 1
        location = self.locations.get(id(node), "")
        self.problems.append(Problem(location, f"{message} ({self.name}:{line})", value_missing))

    def interpolate(self, node: yaml.Node, text: str) -> str:
        """Replace ${VAR} and ${VAR:-default}; "$${" stays a literal "${"."""

        def replace(match: re.Match[str]) -> str:
            escaped, variable, default = match.groups()
            if escaped:
                return match.group(0)[1:]
            if variable is None:
                self.add_problem(node, "invalid interpolation: use ${VAR} or ${VAR:-default}")
                return ""
            return self.lookup(node, variable, default) or ""

        return _INTERPOLATION.sub(replace, text)

    def lookup(self, node: yaml.Node, variable: str, default: str | None) -> str | None:
        """Return an environment variable; the default applies when it is unset or empty."""
        value = self.environ.get(variable)
        if default is not None and not value:
            return default
        if value is None:
            self.add_problem(node, f"environment variable {variable} is not set")
            return None
        return value


def _construct_str(loader: _Loader, node: yaml.Node) -> str | None:
    """Construct a string scalar with ${VAR} interpolation; None if a variable is missing."""
    before = len(loader.problems)
    text = loader.interpolate(node, loader.construct_scalar(node))
    return None if len(loader.problems) > before else text


def _construct_env(loader: _Loader, node: yaml.Node) -> str | None:
    """Construct `!env VAR` or `!env VAR:-default`."""
    if not isinstance(node, yaml.ScalarNode):
        loader.add_problem(node, "!env expects a variable name")
        return None
    match = _ENV_TAG_VALUE.fullmatch(node.value.strip())
    if match is None:
        loader.add_problem(node, f"!env expects VAR or VAR:-default, got {node.value!r}")
        return None
    variable, default = match.groups()
    return loader.lookup(node, variable, default)


def _construct_file(loader: _Loader, node: yaml.Node) -> str | None:
    """Construct `!file PATH`: the file's stripped content; relative to the config's folder."""
    if not isinstance(node, yaml.ScalarNode) or not node.value.strip():
        loader.add_problem(node, "!file expects a file path")
        return None
    before = len(loader.problems)
    path = Path(loader.interpolate(node, node.value.strip())).expanduser()
    if len(loader.problems) > before:
        return None
    if not path.is_absolute():
        path = loader.base_dir / path
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        loader.add_problem(node, f"cannot read {path}: {reason}")
        return None


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("!env", _construct_env)
_Loader.add_constructor("!file", _construct_file)


def _index_nodes(loader: _Loader, root: yaml.Node) -> None:
    """Map every node to its dotted location (first in document order); flag duplicate keys."""
    stack: list[tuple[yaml.Node, list[str | int]]] = [(root, [])]
    while stack:
        node, parts = stack.pop()
        if id(node) in loader.locations:
            continue
        loader.locations[id(node)] = format_location(parts)
        children: list[tuple[yaml.Node, list[str | int]]] = []
        if isinstance(node, yaml.SequenceNode):
            children = [(item, [*parts, index]) for index, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                loader.locations.setdefault(id(key), format_location([*parts, name]))
                if name in seen and key.tag != "tag:yaml.org,2002:merge":
                    loader.add_problem(key, "duplicate key", value_missing=False)
                seen.add(name)
                children.append((value, [*parts, name]))
        stack.extend(reversed(children))


def parse_yaml(
    text: str,
    name: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Any, list[Problem]]:
    """Parse one YAML document; return the data (None where a value failed) and the problems."""
    loader = _Loader(text, name, base_dir or Path.cwd(), os.environ if environ is None else environ)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, []
        _index_nodes(loader, root)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" ({name}:{mark.line + 1}:{mark.column + 1})" if mark else ""
        return None, [Problem("", f"invalid YAML: {exc.problem or exc.context}{where}")]
    except yaml.YAMLError as exc:
        return None, [Problem("", f"invalid YAML: {exc} ({name})")]
    finally:
        loader.dispose()
    return data, loader.problems


def load_yaml(path: str | Path, environ: Mapping[str, str] | None = None) -> Any:
    """Read a YAML config file; raise ConfigError listing every problem."""
    data, problems = read_yaml(path, environ)
    if problems:
        raise ConfigError([str(problem) for problem in problems])
    return data


def read_yaml(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[Any, list[Problem]]:
    """Read a YAML config file; return the data and the problems found while reading it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, [Problem(str(path), f"cannot read config: {reason}")]
    return parse_yaml(text, str(path), path.parent, environ)
