"""YAML for job configs, with limits: a hostile file is refused in milliseconds, with one line.

A config reaches the daemon's API threads from anyone who can submit or drop a
template, so the parser must be bounded in time, memory and stack:

- **size**: at most ``MAX_BYTES`` of text;
- **depth**: at most ``MAX_DEPTH`` nested mappings/lists (PyYAML's composer and
  OmegaConf recurse once per level: deeper input would raise ``RecursionError``);
- **expanded size**: aliases let 300 bytes describe a tree of a billion nodes
  (the "billion laughs"); PyYAML shares the aliased objects, but OmegaConf copies
  them out, so the tree is counted as it will be expanded, at most
  ``MAX_EXPANDED_NODES`` nodes, and an alias that contains itself is refused.

``load_yaml`` is PyYAML's safe loader (it builds no objects) with the same
fixes OmegaConf's own loader makes, described on ``ConfigYamlLoader``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from supervisor.errors import ConfigError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 50
MAX_EXPANDED_NODES = 50_000
# OmegaConf's interpolation grammar recurses per nested "${": 3 000 of them take seconds to fail.
MAX_INTERPOLATION_DEPTH = 10


class YamlLimitError(Exception):
    """The text is valid YAML but over one of the limits (the message says which)."""


class ConfigYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the fixes OmegaConf's own loader makes, and a depth limit.

    YAML 1.2 floats: ``lr: 1e-3`` is a number (YAML 1.1 reads it as a string, and
    a learning rate written that way would reach the optimizer as text). No
    timestamps: ``2024-01-01`` stays a string (OmegaConf cannot hold a date). A
    key given twice in one mapping is an error, not a silent override.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(f"nested more than {MAX_DEPTH} levels deep")
            # the stub says Node | None; PyYAML's composer returns a node for every event it is called on
            return super().compose_node(parent, index)  # type: ignore[return-value]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:
         [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


def read_config_text(path: str | Path) -> str:
    """The text of a config file, refusing more than ``MAX_BYTES`` without reading it all."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read the file: {exc.strerror or exc}") from None
    except ValueError as exc:  # a path with a NUL byte in it
        raise ConfigError(source, None, f"cannot read the file: {exc}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(source, None, f"the file is larger than {MAX_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, f"cannot read the file: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                          f"at offset {exc.start})") from None


def load_yaml(text: str, *, source: str, key: str | None = None, what: str = "invalid YAML") -> Any:
    """Parse ``text`` within the limits. Raises ``ConfigError(source, key, ...)``; never anything else."""
    if len(text) > MAX_BYTES:
        raise ConfigError(source, key, f"larger than {MAX_BYTES // 1024} KiB")
    loader: ConfigYamlLoader | None = None
    try:
        loader = ConfigYamlLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        check_expanded_size(node)
        return loader.construct_document(node)
    except YamlLimitError as exc:
        raise ConfigError(source, key, f"{what}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, key, f"{what}{where}: {problem}") from None
    except RecursionError:  # the depth limit should come first; this is the last line of defence
        raise ConfigError(source, key, f"{what}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def limit_problem(text: str) -> str | None:
    """What limit ``text`` breaks (None: none, or it is not valid YAML: its parser will say so)."""
    if len(text) > MAX_BYTES:
        return f"larger than {MAX_BYTES // 1024} KiB"
    loader: ConfigYamlLoader | None = None
    try:
        loader = ConfigYamlLoader(text)
        node = loader.get_single_node()
        if node is not None:
            check_expanded_size(node)
    except YamlLimitError as exc:
        return str(exc)
    except yaml.YAMLError:
        return None
    except RecursionError:
        return "nested too deeply"
    finally:
        if loader is not None:
            loader.dispose()
    return None


def interpolation_depth(text: str) -> int:
    """How deeply ``${`` nests in ``text`` (``${a.${b}}`` is 2); a cheap scan, before OmegaConf's parser."""
    depth = deepest = 0
    i = 0
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            deepest = max(deepest, depth)
            i += 2
            continue
        if text[i] == "}" and depth:
            depth -= 1
        i += 1
    return deepest


def deepest_interpolation(node: Any, key: str = "") -> tuple[str, int]:
    """The key of the string in ``node`` (a parsed config) whose interpolations nest deepest, and that depth."""
    found = ("", 0)
    stack: list[tuple[str, Any]] = [(key, node)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str) and "${" in value:
            depth = interpolation_depth(value)
            if depth > found[1]:
                found = (where, depth)
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return found


def check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes of ``root`` as if every alias were copied out; raise ``YamlLimitError`` past the limit.

    Iterative (no recursion) and memoised per node, so a bomb is measured in as
    many steps as it has distinct nodes, not as many as it would expand to.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        ident = id(node)
        children = _children(node)
        if children_done:
            on_path.discard(ident)
            size = 1 + sum(sizes[id(child)] for child in children)
            if size > MAX_EXPANDED_NODES:
                raise YamlLimitError(f"aliases expand to more than {MAX_EXPANDED_NODES} values")
            sizes[ident] = size
            continue
        if ident in sizes:
            continue
        if ident in on_path:
            raise YamlLimitError("an alias refers to a node that contains it")
        on_path.add(ident)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise YamlLimitError("an alias refers to a node that contains it")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
