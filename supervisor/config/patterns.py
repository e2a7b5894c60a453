"""Checks of single values that come from people: a job's name, a checkpoint filename pattern.

Both reach places where text is more than text: a name given on the command
line or the web page would be read as an OmegaConf interpolation, and Lightning
formats ``checkpoint.filename`` with ``str.format``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from supervisor.errors import ConfigError

JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def name_override(name: str, source: str) -> str:
    """The override that sets the job's name to exactly ``name``, a literal (``--name``, the web page's name).

    Checked before it reaches OmegaConf: a name is never an interpolation
    (``${oc.env:...}`` would read the daemon's environment), and an error shows
    the text as given, never resolved.
    """
    if not isinstance(name, str) or not JOB_NAME.match(name):
        raise ConfigError(source, "name", f"must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                          f"or digit; got {str(name)[:80]!r} (set on the command line)")
    return f"name={json.dumps(name)}"  # quoted: a name like 1e3 stays text


# Lightning formats checkpoint.filename with str.format over the logged metrics. A field may name a
# metric and carry a plain format spec, nothing more: "{epoch].__repr__.__globals__[os]...}" would walk
# into the trainer's objects, and "{epoch:099999999999}" would ask for a string of 100 GB.
_FILENAME_FIELD = re.compile(r"\{(?P<name>[^{}:]*)(?::(?P<spec>[^{}]*))?\}")
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_./]{1,100}$")
_FORMAT_SPEC = re.compile(r"^(?:[^{}]?[<>=^])?[-+ ]?#?0?(?:[0-9]{1,2})?[,_]?(?:\.[0-9]{1,2})?[bcdeEfFgGnosxX%]?$")
MAX_FILENAME = 200


def checkpoint_filename_problem(pattern: Any) -> str | None:
    """What is wrong with a ``checkpoint.filename`` pattern, or None.

    Allowed: text without braces, and ``{metric}`` / ``{metric:spec}`` fields where
    ``metric`` is a metric name (letters, digits, ``_``, ``.``, ``/``) and ``spec`` a
    plain format spec of at most two digits of width and precision.
    """
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty text like {epoch}-{step}"
    if len(pattern) > MAX_FILENAME:
        return f"at most {MAX_FILENAME} characters"
    position = 0
    for match in _FILENAME_FIELD.finditer(pattern):
        if "{" in pattern[position:match.start()] or "}" in pattern[position:match.start()]:
            break
        name, spec = match.group("name"), match.group("spec")
        if not _METRIC_NAME.match(name):
            return (f"{{{name}...}}: a field must name a metric (letters, digits, '_', '.', '/'), "
                    "without attribute or index access")
        if spec is not None and not _FORMAT_SPEC.match(spec):
            return f"{{{name}:{spec}}}: the format spec must be a plain one like 03d or .4f (width at most 99)"
        position = match.end()
    rest = pattern[position:]
    if "{" in rest or "}" in rest:
        return "braces only around a field like {epoch} or {val_loss:.4f}"
    return None
