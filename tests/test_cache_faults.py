"""The cache folder when it cannot be used as configured: unwritable (a private temporary folder takes
its place, with one warning) or writable by others (refused: its modules are executed when loaded)."""
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import lossdsl
from lossdsl.runtime import cache

SPEC = "loss faulty_sq(x, y)\n    faulty_sq = (x - y)^2\n"


@pytest.fixture
def fresh_folders(monkeypatch):
    """No folder settled yet in this process (which folder is in use is decided once per configured one)."""
    monkeypatch.setattr(cache, "_FOLDERS", {})
    monkeypatch.setattr(cache, "_FALLBACK", None)


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _read_only(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into a folder whatever its mode (a path under a file covers a folder root "
                    "cannot make)")
    path = tmp_path / "read_only"
    path.mkdir(mode=0o500)
    return path


@pytest.mark.parametrize("wanted", [_a_file, lambda tmp_path: _a_file(tmp_path) / "lossdsl", _read_only],
                         ids=["a file", "under a file", "a read-only folder"])
def test_an_unwritable_folder_gives_way_to_a_private_temporary_one(tmp_path, monkeypatch, fresh_folders, wanted):
    wanted = wanted(tmp_path)
    monkeypatch.setenv("LOSSDSL_CACHE_DIR", str(wanted))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = cache.folder()
        assert cache.folder() == used
    (warning,) = caught  # one warning, naming the folder and the variable that sets it
    assert f"cannot write the cache folder {wanted}" in str(warning.message)
    assert "LOSSDSL_CACHE_DIR" in str(warning.message)
    info = used.stat()
    assert used != wanted and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
    assert cache.load("probe", "0" * 64, lambda: "VALUE = 1\n").VALUE == 1  # written there, and it passes the checks
    assert cache.module_path("probe", "0" * 64).parent == used


def test_an_unusable_home_gives_way_to_a_private_temporary_one(tmp_path, monkeypatch, fresh_folders):
    monkeypatch.delenv("LOSSDSL_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(_a_file(tmp_path)))
    with pytest.warns(UserWarning, match=f"cannot write the cache folder {_a_file(tmp_path)}.*LOSSDSL_CACHE_DIR"):
        used = cache.folder()
    assert not used.is_relative_to(tmp_path)

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(Path, "home", no_home)  # an arbitrary uid with no home on record
    with pytest.warns(UserWarning, match="no home folder.*LOSSDSL_CACHE_DIR"):
        assert cache.folder() == used  # one temporary folder per process


def test_commands_and_losses_work_with_an_unwritable_folder(tmp_path):
    """`lossdsl list` and a loss, compiled and called, in a process whose cache folder is a file."""
    env = {**os.environ, "LOSSDSL_CACHE_DIR": str(_a_file(tmp_path))}
    listing = subprocess.run([sys.executable, "-m", "lossdsl", "list"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert "huber" in listing.stdout and listing.stderr.count("cannot write the cache folder") == 1
    code = f"import numpy as np, lossdsl; print(lossdsl.compile({SPEC!r})(np.array([3.0]), np.array([1.0])))"
    called = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert called.returncode == 0, called.stderr
    assert called.stdout.strip() == "4.0" and called.stderr.count("cannot write the cache folder") == 1


def test_a_folder_others_can_write_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSDSL_CACHE_DIR", str(tmp_path))
    tmp_path.chmod(0o777)
    loss = lossdsl.compile(SPEC)
    with pytest.raises(lossdsl.LossCacheError, match=f"folder {tmp_path}: other users can write it .*"
                                                     f"chmod go-w {tmp_path}.*LOSSDSL_CACHE_DIR"):
        loss(np.array([3.0]), np.array([1.0]))
    assert not list(tmp_path.glob("*.py"))  # nothing generated there, nothing imported
    listing = subprocess.run([sys.executable, "-m", "lossdsl", "list"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "LOSSDSL_CACHE_DIR": str(tmp_path)})
    assert listing.returncode == 2 and "Traceback" not in listing.stderr
    assert f"refusing to load cached code from the folder {tmp_path}" in listing.stderr
    tmp_path.chmod(0o700)
    assert loss(np.array([3.0]), np.array([1.0])) == 4.0


@pytest.mark.parametrize("kind", ["module", "catalogue index"])
def test_a_file_others_can_write_is_refused(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("LOSSDSL_CACHE_DIR", str(tmp_path))
    if kind == "module":
        path = cache.module_path("planted", "0" * 64)
        cache.write_module(path, "VALUE = 1\n")
        load = lambda: cache.load("planted", "0" * 64, lambda: "VALUE = 1\n")  # noqa: E731
    else:
        lossdsl.frontend.registry._index.cache_clear()
        lossdsl.frontend.registry._index()
        (path,) = tmp_path.glob("catalogue_*.pickle")
        load = lambda: (lossdsl.frontend.registry._index.cache_clear(), lossdsl.frontend.registry._index())  # noqa: E731
    path.chmod(0o620)
    with pytest.raises(lossdsl.LossCacheError, match=f"file {path}: other users can write it .*chmod go-w {path}"):
        load()
    path.chmod(0o600)
    load()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_another_user_owns_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSDSL_CACHE_DIR", str(tmp_path))
    path = cache.module_path("planted", "0" * 64)
    cache.write_module(path, "VALUE = 1\n")
    os.chown(path, 12345, -1)
    with pytest.raises(lossdsl.LossCacheError, match=f"file {path}: it is owned by another user \\(uid 12345\\)"):
        cache.load("planted", "0" * 64, lambda: "VALUE = 1\n")
