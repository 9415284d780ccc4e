"""Where the grammar and the catalogue's spec files live.

In a wheel they are package data under `lossdsl/_data/`; in a source checkout
(or an editable install) they are the top-level `grammar/` and `specs/` folders.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # lossdsl/


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lossdsl's {name}/ folder is missing from this installation")


def grammar_file() -> Path:
    return _data_dir("grammar") / "loss.lark"


def specs_dir() -> Path:
    return _data_dir("specs")


def source_fingerprint(*paths: str) -> str:
    """A hash of some of lossdsl's own source files or folders of them (paths relative to the package):
    cached results derived by that code are invalid once it is edited."""
    digest = hashlib.sha256()
    for name in paths:
        path = _PACKAGE / name
        for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
