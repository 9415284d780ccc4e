"""The on-disk cache of generated kernel modules.

A module is stored under a key made from everything that shapes its code, so a
second process that loads the same loss skips SymPy and code generation; Numba's
own cache (`cache=True`: in `__pycache__` beside the module, or under
`$NUMBA_CACHE_DIR`) then skips the machine-code compile. Writes go to a temporary file that is renamed into place,
so concurrent compiles never leave a half-written module; each module ends with a
checksum line, and a module that fails it (or fails to import) is rebuilt.

A folder that cannot be written gives way to a private temporary one (with a warning):
a cache is an optimisation, never a reason to fail. A folder or file other users can
change is refused (`LossCacheError`): what is loaded from it is executed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re
import stat
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from types import FunctionType, ModuleType
from typing import Callable

from ..errors import LossCacheError

_LOADING = threading.RLock()
_CHECKSUM = re.compile(r"\n# sha256 ([0-9a-f]{64})\n\Z")
_FOLDERS: dict[Path | None, Path] = {}  # the configured folder (None: none could be named) → the one in use
_FALLBACK: tempfile.TemporaryDirectory | None = None


def cache_dir() -> Path:
    """The configured folder: `$LOSSDSL_CACHE_DIR`, else the platform's user cache folder + /lossdsl
    (RuntimeError without a home folder); `folder()` is the one in use."""
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


def folder() -> Path:
    """The folder in use: `cache_dir()`, created private, if a file can be written there; else a private
    temporary folder, removed when the process exits, with one warning per configured folder."""
    with _LOADING:
        try:
            wanted: Path | None = cache_dir()
        except RuntimeError:  # Path.home(): no HOME and no home folder on record (a container's arbitrary uid)
            wanted = None
        if wanted not in _FOLDERS:
            _FOLDERS[wanted] = _writable_folder(wanted)
        return _FOLDERS[wanted]


def module_path(name: str, key: str) -> Path:
    return folder() / f"{_stem(name, key)}.py"


def _stem(name: str, key: str) -> str:
    """A file name from a loss's name and its key: the name cut to 64 characters (file systems allow 255
    bytes, Numba adds its own suffixes), the key telling any two apart."""
    return f"{name[:64]}_{key[:24]}"


def load(name: str, key: str, build: Callable[[], str]) -> ModuleType:
    """The module stored under `key`, built with `build()` (its source text) when absent or damaged.
    One thread at a time: another would find the module in sys.modules before its kernels exist."""
    with _LOADING:
        path = module_path(name, key)
        _check_private(path.parent)
        _check_private(path)
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
    They are looked for where Numba itself would put them (NUMBA_CACHE_DIR moves them).
    """
    path = module_path(name, key)
    sys.modules.pop(f"_lossdsl_{path.stem}", None)
    machine_code = _machine_code_folder(path)
    for stale in machine_code.glob(f"{path.stem}.*") if machine_code else ():
        stale.unlink(missing_ok=True)


def _machine_code_folder(path: Path) -> Path | None:
    """Where Numba keeps the machine code of the module at `path` (`__pycache__` beside it, a folder
    under `$NUMBA_CACHE_DIR`, Numba's user-wide cache...), asked of Numba's own cache locators for a
    stand-in function from that file; None where Numba can keep none."""
    from numba.core.caching import FunctionCache
    stand_in = FunctionType(compile("", str(path), "exec"), {})
    try:
        return Path(FunctionCache(stand_in).cache_path)
    except RuntimeError:  # no locator can cache a function from this file
        return None


def write_module(path: Path, source: str) -> None:
    """Write `source` plus its checksum atomically (temporary file, then rename)."""
    text = source.rstrip("\n") + "\n"
    text += f"\n# sha256 {hashlib.sha256(text.encode()).hexdigest()}\n"
    _write_atomically(path, text.encode("utf-8"))


def load_object(name: str, key: str, build: Callable[[], object]) -> object:
    """A pickled object stored under `key` (e.g. the parsed catalogue), built with `build()` when absent.

    The folder and the file must be private to the user (checked), as for the modules (which are
    executed) and Numba's own cache (also pickles); a file that fails its checksum or to unpickle is rebuilt.
    """
    path = folder() / f"{_stem(name, key)}.pickle"
    _check_private(path.parent)
    _check_private(path)
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


def _writable_folder(wanted: Path | None) -> Path:
    """`wanted`, created private, if a file can be written there; else the process's temporary folder,
    with a warning naming the folder that failed and the variable that sets it."""
    global _FALLBACK
    if wanted is None:
        reason = "no home folder to put the cache folder in"
    else:
        try:
            wanted.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: its modules are executed on load
            tempfile.TemporaryFile(dir=wanted).close()
            return wanted
        except OSError as exc:  # a read-only mount, a file, a folder under a file, no permission
            reason = f"cannot write the cache folder {wanted} ({exc.strerror or exc})"
    if _FALLBACK is None:
        try:
            _FALLBACK = tempfile.TemporaryDirectory(prefix="lossdsl-")  # mode 700
        except OSError as exc:
            raise LossCacheError(f"{reason}, nor a temporary folder ({exc}): set LOSSDSL_CACHE_DIR to a folder "
                                 "you can write") from None
    warnings.warn(f"lossdsl: {reason}; compiled losses are kept in {_FALLBACK.name} until this process ends. "
                  "Set LOSSDSL_CACHE_DIR to a folder you can write to keep them across runs.", stacklevel=3)
    return Path(_FALLBACK.name)


def _check_private(path: Path) -> None:
    """Refuse the cache folder or a file in it (if it exists) unless only its owner, this user or root,
    can change it, as SSH checks its keys: its modules are executed and its pickles loaded."""
    if os.name != "posix":
        return
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
    if info.st_uid not in (os.geteuid(), 0):
        raise LossCacheError(f"refusing to load cached code from the {kind} {path}: it is owned by another user "
                             f"(uid {info.st_uid}), who could make lossdsl run their code; set LOSSDSL_CACHE_DIR "
                             "to a folder of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LossCacheError(f"refusing to load cached code from the {kind} {path}: other users can write it "
                             f"(mode {stat.filemode(info.st_mode)}), so they could make lossdsl run their code; "
                             f"run `chmod go-w {path}`, or set LOSSDSL_CACHE_DIR to a private folder")


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
