"""The on-disk cache of generated kernel modules.

A module is stored under a key made from everything that shapes its code, so a
second process that loads the same loss skips SymPy and code generation; Numba's
own cache (`cache=True`, in `__pycache__` beside the module) then skips the
machine-code compile. Writes go to a temporary file that is renamed into place,
so concurrent compiles never leave a half-written module; each module ends with a
checksum line, and a module that fails it (or fails to import) is rebuilt.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable

_LOADING = threading.RLock()
_CHECKSUM = re.compile(r"\n# sha256 ([0-9a-f]{64})\n\Z")


def cache_dir() -> Path:
    """`$LOSSDSL_CACHE_DIR`, else the platform's user cache folder + /lossdsl."""
    override = os.environ.get("LOSSDSL_CACHE_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lossdsl"


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def module_path(name: str, key: str) -> Path:
    return cache_dir() / f"{name}_{key[:24]}.py"


def load(name: str, key: str, build: Callable[[], str]) -> ModuleType:
    """The module stored under `key`, built with `build()` (its source text) when absent or damaged.
    One thread at a time: another would find the module in sys.modules before its kernels exist."""
    with _LOADING:
        path = module_path(name, key)
        if _intact(path):
            try:
                return _import(path)
            except Exception:  # a module that no longer imports is rebuilt, not trusted
                pass
        write_module(path, build())
        return _import(path)


def discard_machine_code(name: str, key: str) -> None:
    """Forget a module's imported copy and Numba's cached machine code for it (kept: its source).

    Numba trusts its cache files; a damaged one fails when a kernel is first called
    (an UnpicklingError or EOFError), and the caller then discards and retries once.
    """
    path = module_path(name, key)
    sys.modules.pop(f"_lossdsl_{path.stem}", None)
    for stale in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
        stale.unlink(missing_ok=True)


def write_module(path: Path, source: str) -> None:
    """Write `source` plus its checksum atomically (temporary file, then rename)."""
    text = source.rstrip("\n") + "\n"
    text += f"\n# sha256 {hashlib.sha256(text.encode()).hexdigest()}\n"
    _write_atomically(path, text.encode("utf-8"))


def load_object(name: str, key: str, build: Callable[[], object]) -> object:
    """A pickled object stored under `key` (e.g. the parsed catalogue), built with `build()` when absent.

    The folder is private to the user, as for the modules (which are executed) and
    Numba's own cache (also pickles); a file that fails its checksum or to unpickle is rebuilt.
    """
    path = cache_dir() / f"{name}_{key[:24]}.pickle"
    try:
        data = path.read_bytes()
        if hashlib.sha256(data[32:]).digest() == data[:32]:
            return pickle.loads(data[32:])
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
        pass
    value = build()
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    _write_atomically(path, hashlib.sha256(payload).digest() + payload)
    return value


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: its modules are executed on load
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _intact(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    match = _CHECKSUM.search(text)
    return bool(match) and hashlib.sha256(text[:match.start()].encode()).hexdigest() == match.group(1)


def _import(path: Path) -> ModuleType:
    # Registered in sys.modules: Numba's cache finds a kernel's globals by importing its module's name.
    module_name = f"_lossdsl_{path.stem}"
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
