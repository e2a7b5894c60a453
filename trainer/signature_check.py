"""Check argument *values* against a class's signature and type hints, with jsonargparse.

``build.py`` checks names (unknown and missing arguments); this checks types:
``trainer.max_epochs: ten`` is refused at submit, with one line, instead of
failing inside ``Trainer(...)`` on every attempt. jsonargparse is what
LightningCLI itself uses for this, so a value it accepts here is one
LightningCLI would accept too. Runs in the job's interpreter (``--check``) and
before each fit; never in the daemon.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from supervisor.errors import ConfigError

_PARSER_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*(?P<rest>.*)$', re.DOTALL)
_NOT_ACCEPTED = re.compile(r"^Option '(?P<key>[^']+)' is not accepted")
_SUBTYPES = re.compile(r"Subtypes: \[(?P<types>.*?)\]\n", re.DOTALL)
_GIVEN = re.compile(r"Given value: (?P<value>.*)$", re.MULTILINE)
_EXPECTED = re.compile(r"Expected a (?P<type>.+?)(?:\. Got value: (?P<value>.*))?$", re.MULTILINE)


def check_argument_types(cls: Any, args: dict[str, Any], *, key: str, source: str, skip: set[str] | None = None
                         ) -> None:
    """Raise ``ConfigError(source, f"{key}.{arg}", problem)`` when a value does not fit ``cls``'s type hints.

    ``args`` are the keyword arguments the config gives ``cls`` (names already
    checked); ``skip`` are parameters the supervisor sets itself. A class whose
    signature jsonargparse cannot read is left to its constructor.
    """
    from jsonargparse import ArgumentParser  # slow to import: only when checking

    skip = set(skip or ())
    try:
        parameters = inspect.signature(cls).parameters
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False, skip=skip)
    except Exception:  # an exotic signature: the names were checked, construction decides the rest
        return
    known = {name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    # Only the parameters jsonargparse knows: a **kwargs class may take others, checked by name already.
    checkable = {name: value for name, value in args.items() if name in known and name not in skip}
    try:
        parser.parse_object(checkable, defaults=False)
    except Exception as exc:  # jsonargparse's ArgumentError (or a TypeError from an odd type hint)
        arg, problem = describe(str(exc))
        raise ConfigError(source, f"{key}.{arg}" if arg else key, problem) from None


def describe(message: str) -> tuple[str | None, str]:
    """jsonargparse's multi-line error -> (argument, one-line problem)."""
    message = message.strip()
    if match := _NOT_ACCEPTED.match(message):
        return match.group("key"), "not an argument"
    match = _PARSER_KEY.match(message)
    if match is None:
        return None, _first_line(message)
    arg, rest = match.group("key"), match.group("rest")
    given = _GIVEN.search(rest)
    got = f"; got {given.group('value').strip()[:80]!r}" if given else ""
    subtypes = _SUBTYPES.search(rest)
    if subtypes:
        return arg, f"expected {_plain_types(subtypes.group('types'))}{got}"
    expected = _EXPECTED.search(rest)
    if expected:
        if not got and expected.group("value") is not None:
            got = f"; got {expected.group('value').strip()[:80]!r}"
        return arg, f"expected {_plain_types(expected.group('type'))}{got}"
    return arg, _first_line(rest) + got


def _plain_types(text: str) -> str:
    """``[<class 'int'>, <class 'NoneType'>]`` -> ``int or None``; ``Literal[a, b]`` -> ``one of a, b``."""
    literals: list[str] = []
    types: list[str] = []
    for part in _split_top(text.strip().strip("[]") if text.strip().startswith("[") else text):
        part = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", part.strip()).replace("typing.", "")
        if match := re.fullmatch(r"Literal\[(.*)\]", part):
            literals.extend(item.strip() for item in _split_top(match.group(1)))
        elif part:
            types.append("None" if part == "NoneType" else part)
    choices = [f"one of {', '.join(literals)}"] if literals else []
    return " or ".join(choices + types)


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "invalid value"
