"""The console scripts' entry points: first make sure our import names are ours, then run the command.

Our packages are imported as ``supervisor`` and ``trainer``. Supervisord's PyPI
package also installs a ``supervisor`` package (with ``__init__.py``,
``process.py`` and ``states.py``, the same paths as ours), and a PyPI package
called ``trainer`` installs ``trainer/``. Installed into one environment, they
silently overwrite each other's files, and uninstalling one deletes the other's.

So the console scripts start here, in a module supervisord does not ship, and
ask ``importlib.metadata`` (standard library only, nothing of ours imported yet)
whether another installed distribution provides files under those names. If one
does, the command exits with one line naming it and the fix, before anything
that could be the other package's file is imported.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from importlib import metadata

OWN_DISTRIBUTION = "ml-supervisor"
IMPORT_NAMES = ("supervisor", "trainer")
EXIT_CLASH = 1


def _normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them (``ML_Supervisor`` == ``ml-supervisor``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _provided_names(dist: metadata.Distribution, names: Iterable[str]) -> list[str]:
    """Which of ``names`` the distribution installs as top-level packages or modules."""
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        declared = {line.strip() for line in top_level.splitlines()}
        return [name for name in names if name in declared]
    # No top_level.txt (wheels not built by setuptools): look for the paths in RECORD.
    # A plain substring search: RECORDs of big wheels have tens of thousands of lines.
    record = "\n" + (dist.read_text("RECORD") or "")
    return [name for name in names
            if f"\n{name}/" in record or f"\n{name}.py," in record]


def foreign_providers(names: Iterable[str] = IMPORT_NAMES) -> list[tuple[str, str, str]]:
    """Installed distributions other than ours that provide one of ``names``.

    Returns ``(import name, distribution name, version)`` for each, in the order
    ``importlib.metadata`` finds them on ``sys.path``, without duplicates.
    """
    wanted = tuple(names)
    found: list[tuple[str, str, str]] = []
    for dist in metadata.distributions():
        provided = _provided_names(dist, wanted)
        if not provided:
            continue
        dist_name = dist.metadata["Name"] or "?"
        if _normalized(dist_name) == OWN_DISTRIBUTION:
            continue
        for name in provided:
            entry = (name, dist_name, dist.version or "?")
            if entry not in found:
                found.append(entry)
    return found


def clash_message(prog: str, providers: list[tuple[str, str, str]]) -> str:
    """The one line a user sees when another distribution shares our import names."""
    what = "; ".join(f"'{name}' is also provided by {dist} {version}" for name, dist, version in providers)
    return (f"{prog}: error: import name clash: {what} (installed in this environment, their files overwrite ours); "
            f"install ml-supervisor in its own virtual environment: python3 -m venv ~/.venvs/ml-supervisor")


def _checked(prog: str, load_main: Callable[[], Callable[[], int]]) -> int:
    providers = foreign_providers()
    if providers:
        print(clash_message(prog, providers), file=sys.stderr)
        return EXIT_CLASH
    return load_main()()


def ml_supervisor() -> int:
    """``ml-supervisor``: the import-name check, then ``supervisor.cli.main``."""
    def load() -> Callable[[], int]:
        from supervisor.cli.main import main
        return main
    return _checked("ml-supervisor", load)


def supervisorctl() -> int:
    """``supervisorctl`` / ``ml-supervisorctl``: the import-name check, then ``supervisor.cli.ctl``."""
    def load() -> Callable[[], int]:
        from supervisor.cli.ctl import main
        return main
    return _checked("supervisorctl", load)
