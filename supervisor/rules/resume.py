"""Which checkpoint the next attempt resumes from, chosen without torch.

The manifest (``supervisor.jobfiles.manifest``) ranks the checkpoints; each
candidate is then checked on disk, because a manifest line only says the file
was complete when it was written: a disk error, a full disk during a later copy
or a bad sector can still corrupt it. A torch checkpoint is a zip archive, so the
standard library can check every member's CRC. The first candidate that checks
wins; when none does, the attempt starts from scratch, and ``skipped`` says why
each one was passed over.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from supervisor.jobfiles.manifest import CheckpointEntry, rank_best, rank_newest

RESUME_CHOICES = ("best", "last", "auto")
NON_FINITE = "non-finite metrics"


@dataclass(frozen=True)
class ResumeChoice:
    """The checkpoint to resume from (``path`` None: from scratch) and how it was chosen.

    ``rule`` is one of ``best``, ``last``, ``auto: last``,
    ``auto: best (last has non-finite metrics)``, any of those followed by
    ``, fallback: next best`` / ``, fallback: next newest`` when the first
    candidate was rejected, or ``scratch`` when no candidate was left.
    """

    path: str | None
    entry: CheckpointEntry | None
    rule: str
    skipped: tuple[tuple[str, str], ...]  # (path, why) for each candidate rejected on the way


def verify_checkpoint(entry: CheckpointEntry) -> str | None:
    """``None`` when ``entry.path`` looks like a whole torch checkpoint, else a short reason.

    Checks, cheapest first: the file exists; its size is the manifest's (when the
    manifest recorded one, i.e. > 0); it is a zip archive (torch.save's format)
    holding a ``data.pkl``; every member's CRC-32 matches its data (this reads the
    whole file once).
    """
    path = entry.path
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if not os.path.isfile(path):
        return "not a regular file"
    if entry.size > 0 and size != entry.size:
        return f"size {size} bytes, the manifest says {entry.size}"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # torch.save writes "<archive name>/data.pkl" (plus tensor storages); without it
            # the archive is not something torch.load can read.
            if not any(name == "data.pkl" or (name.endswith("/data.pkl") and name.count("/") == 1)
                       for name in names):
                return "not a torch checkpoint (no data.pkl in the archive)"
            bad_member = archive.testzip()
    except zipfile.BadZipFile as exc:
        return f"not a valid zip archive ({exc})"
    except (zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        # A compressed member that does not inflate, or an archive zipfile cannot read.
        return f"corrupt zip archive ({type(exc).__name__}: {exc})"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if bad_member is not None:
        return f"bad CRC in member {bad_member}"
    return None


def choose_resume(entries: Sequence[CheckpointEntry], resume_from: str,
                  verify: Callable[[CheckpointEntry], str | None] = verify_checkpoint) -> ResumeChoice:
    """Pick the checkpoint the next attempt resumes from.

    ``entries`` are the live checkpoints (``live_checkpoints``); ``resume_from``
    is ``supervision.resume_from``. Candidate order:

    - ``best``: ``rank_best`` order, then any entry left in ``rank_newest`` order;
    - ``last``: ``rank_newest`` order, then any entry left in ``rank_best`` order;
    - ``auto``: like ``last`` when the newest entry's metrics were finite, else like
      ``best``; in both cases entries with non-finite metrics are skipped
      (resuming from weights that already hold a NaN would only fail again).

    The first candidate that ``verify`` accepts wins. ``best`` and ``last`` do not
    skip non-finite entries: the user asked for that checkpoint by name. Raises
    ``ValueError`` for an unknown ``resume_from``.
    """
    if resume_from not in RESUME_CHOICES:
        raise ValueError(f"resume_from must be one of {', '.join(RESUME_CHOICES)}; got {resume_from!r}")
    entries = list(entries)
    skip_non_finite = resume_from == "auto"
    if resume_from == "auto":
        newest = rank_newest(entries)
        newest_finite = not newest or newest[0].finite
        by_best = not newest_finite
        rule = "auto: last" if newest_finite else "auto: best (last has non-finite metrics)"
    else:
        by_best = resume_from == "best"
        rule = resume_from
    if by_best:
        candidates = _unique(rank_best(entries), rank_newest(entries))
    else:
        candidates = _unique(rank_newest(entries), rank_best(entries))

    skipped: list[tuple[str, str]] = []
    for i, entry in enumerate(candidates):
        why = NON_FINITE if skip_non_finite and not entry.finite else verify(entry)
        if why is None:
            if i > 0:
                rule += ", fallback: next best" if by_best else ", fallback: next newest"
            return ResumeChoice(entry.path, entry, rule, tuple(skipped))
        skipped.append((entry.path, why))
    return ResumeChoice(None, None, "scratch", tuple(skipped))


def _unique(*orders: Iterable[CheckpointEntry]) -> list[CheckpointEntry]:
    """The entries of ``orders`` concatenated, each path once (its first place wins)."""
    seen: set[str] = set()
    out = []
    for order in orders:
        for entry in order:
            if entry.path not in seen:
                seen.add(entry.path)
                out.append(entry)
    return out
