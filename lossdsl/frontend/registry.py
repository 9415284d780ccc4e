"""The built-in catalogue: one `specs/<name>.loss` file per loss, found by listing the folder.

The parsed index is kept in the on-disk cache (keyed by the spec texts and the parser's
source), so loading a catalogue loss in a new process neither imports Lark nor parses.
"""
from __future__ import annotations

import difflib
import functools
from pathlib import Path

from ..runtime import cache
from . import ir
from ..errors import SpecNameError, UnknownLossError
from .resources import grammar_file, source_fingerprint, specs_dir


@functools.lru_cache(maxsize=None)
def _index() -> dict[str, tuple[ir.LossDef, str]]:
    """Every catalogue name and alias → (its LossDef, the text of its file)."""
    files = [(path, path.read_text(encoding="utf-8")) for path in sorted(specs_dir().glob("*.loss"))]
    key = cache.digest(*(f"{path.name}\n{text}" for path, text in files), grammar_file().read_text(encoding="utf-8"),
                       source_fingerprint("frontend/parse.py", "frontend/ir.py", "errors.py", "frontend/registry.py"))
    return cache.load_object("catalogue", key, lambda: _parse_all(files))


def _parse_all(files: list[tuple[Path, str]]) -> dict[str, tuple[ir.LossDef, str]]:
    from .parse import parse  # Lark: only when the spec files changed since the index was cached
    index: dict[str, tuple[ir.LossDef, str]] = {}
    for path, text in files:
        for loss in parse(text, _display_path(path)):
            for name in (loss.name, *loss.aliases):
                if name in index:
                    raise SpecNameError(f"catalogue name {name!r} is also defined in {index[name][0].file}",
                                        loss.file, loss.pos.line, loss.pos.column)
                index[name] = (loss, text)
    return index


def _display_path(path: Path) -> str:
    return f"specs/{path.name}"


def names() -> list[str]:
    """The canonical names of the built-in losses (aliases excluded), sorted."""
    return sorted({loss.name for loss, _ in _index().values()})


def aliases() -> dict[str, str]:
    """alias → canonical name."""
    return {name: loss.name for name, (loss, _) in _index().items() if name != loss.name}


def find(name: str) -> ir.LossDef | None:
    entry = _index().get(name)
    return entry[0] if entry else None


def get(name: str) -> tuple[ir.LossDef, str]:
    """The LossDef and its file's text; unknown names get close suggestions."""
    entry = _index().get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(_index()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `lossdsl list` shows the catalogue"
        raise UnknownLossError(f"no loss named {name!r} in the catalogue{hint}")
    return entry
