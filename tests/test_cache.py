"""The on-disk cache: reuse across processes, atomic writes, damaged files rebuilt."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lossdsl
from lossdsl import compiler
from lossdsl.runtime import cache

SPEC = "loss cached_sq(x, y)\n    param k = 2.0\n    cached_sq = k*(x - y)^2\n"
ROW_SPEC = "loss cached_ce(x[c], y)\n    param k = 1.0\n    cached_ce = k*(logsumexp(x, c) - x[y])\n"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSDSL_CACHE_DIR", str(tmp_path))
    return tmp_path


def _run(code: str, cache_dir, numba_cache_dir=None) -> subprocess.CompletedProcess:
    """`code` in a new process; Numba keeps machine code beside the modules, or under `numba_cache_dir`
    (NUMBA_CACHE_DIR is read when Numba is imported, so only a new process can change it)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["LOSSDSL_CACHE_DIR"] = str(cache_dir)
    if numba_cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(numba_cache_dir)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


BLOCK_MODE = """
    import sys
    import numpy as np, lossdsl
    from lossdsl.classaxis.heads import LinearHead
    from lossdsl.classaxis.sharding import ShardedLoss
    rng = np.random.default_rng(0)
    x, w, y = rng.normal(size=(12, 4)), rng.normal(size=(10, 4)), np.arange(12) % 10
    head = LinearHead(lossdsl.load("linear_cross_entropy").loss, chunk_rows=4, chunk_classes=3)  # blocks of classes
    print(repr(float(head.value_and_grad(x, w, y)[0])))
    logits = x @ w.T
    sharded = ShardedLoss(lossdsl.load("cross_entropy"), lambda array, op: array)  # one process: its own partials
    print(repr(float(sharded.value_and_grad(logits, y, class_start=0, classes=10)[0])))
    print("sympy" in sys.modules, "lark" in sys.modules)
"""


def test_block_mode_losses_load_without_sympy_once_cached(cache_dir):
    """A head met a block of classes at a time and a sharded loss read their partials' layout from the
    cached block module, so a second process imports neither SymPy nor Lark."""
    first, second = _run(BLOCK_MODE, cache_dir), _run(BLOCK_MODE, cache_dir)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    rng = np.random.default_rng(0)
    x, w, y = rng.normal(size=(12, 4)), rng.normal(size=(10, 4)), np.arange(12) % 10
    logits = x @ w.T
    reference = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(12), y])  # PyTorch's mean CE
    head_value, sharded_value, *imported = second.stdout.split()
    np.testing.assert_allclose([float(head_value), float(sharded_value)], reference, rtol=1e-12)
    assert imported == ["False", "False"]


def test_location_follows_the_environment(cache_dir):
    assert cache.cache_dir() == cache_dir


@pytest.mark.parametrize("spec, inputs, first_value, second_value", [
    (SPEC, "np.array([3.0]), np.array([1.0])", "8.0", "12.0"),
    # a loss over an axis: log(2) - 0 for a row of zeros; k = 3 triples it
    (ROW_SPEC, "np.zeros((1, 2)), np.array([1])", repr(float(np.log(2))), repr(float(3 * np.log(2)))),
])
def test_a_second_process_skips_sympy_and_codegen(cache_dir, spec, inputs, first_value, second_value):
    """A cached loss loads without importing SymPy or the code generator."""
    first = _run(f"""
        import numpy as np, lossdsl
        print(float(lossdsl.compile({spec!r})({inputs}, reduction="sum")))
    """, cache_dir)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == first_value
    second = _run(f"""
        import sys
        import numpy as np, lossdsl
        print(float(lossdsl.compile({spec!r}, k=3.0).value_and_grad({inputs}, reduction="sum")[0]))
        print("sympy" in sys.modules, any(m.startswith("lossdsl.codegen") for m in sys.modules))
    """, cache_dir)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == [second_value, "False", "False"]  # neither SymPy nor the code generator ran
    assert list(cache_dir.glob("__pycache__/*.nbi")), "Numba's machine-code cache was not written"


def test_a_second_process_loads_a_catalogue_loss_without_lark(cache_dir):
    """The parsed catalogue is cached: neither `import lossdsl` nor a cached catalogue loss imports Lark."""
    code = """
        import sys
        import numpy as np, lossdsl
        imported = "lark" in sys.modules
        print(float(lossdsl.load("huber", delta=2.0)(np.array([5.0]), np.array([0.0]))), imported, "lark" in sys.modules,
              "numba.cuda" in sys.modules)
    """
    first, second = _run(code, cache_dir), _run(code, cache_dir)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.split() == ["8.0", "False", "True", "False"]  # 2 * (5 - 1); the first process parsed the specs
    assert second.stdout.split() == ["8.0", "False", "False", "False"]  # and CUDA is never imported for the CPU
    assert list(cache_dir.glob("catalogue_*.pickle"))


def test_a_damaged_catalogue_index_is_rebuilt(cache_dir):
    lossdsl.frontend.registry._index.cache_clear()
    assert "huber" in lossdsl.frontend.registry._index()
    (pickled,) = cache_dir.glob("catalogue_*.pickle")
    pickled.write_bytes(pickled.read_bytes()[:100])  # truncated: the checksum fails
    lossdsl.frontend.registry._index.cache_clear()
    assert "huber" in lossdsl.frontend.registry._index()
    assert len(pickled.read_bytes()) > 100


def test_keys_separate_what_changes_the_code(cache_dir):
    poisson = [lossdsl.load("poisson_nll", **p)._resolved for p in ({}, {"eps": 1e-3}, {"full": True})]
    keys = [compiler.kernel_key(r, np.dtype(np.float64)) for r in poisson]
    assert keys[0] == keys[1]  # numeric parameters are runtime arguments
    assert keys[0] != keys[2]  # a formula-choosing parameter changes the code
    assert keys[0] != compiler.kernel_key(poisson[0], np.dtype(np.float32))


def test_writes_are_atomic_and_checked(cache_dir):
    path = cache_dir / "demo_0.py"
    cache.write_module(path, "VALUE = 1\n")
    assert path.read_text().splitlines()[-1].startswith("# sha256 ")
    assert [p.name for p in cache_dir.iterdir()] == ["demo_0.py"]  # no temporary file left behind
    module = cache.load("demo", "0" * 64, lambda: "VALUE = 2\n")
    assert module.VALUE == 2  # demo_0 is not the file for this key: built fresh


@pytest.mark.parametrize("damage", [
    lambda text: text.replace("loss_value", "loss_valve", 1),  # edited: checksum fails
    lambda text: text[: len(text) // 2],                          # truncated
    lambda text: "\x00\xff garbage",
])
def test_a_damaged_module_is_rebuilt(cache_dir, damage):
    loss = lossdsl.compile(SPEC)
    resolved = loss._resolved
    key = compiler.kernel_key(resolved, np.dtype(np.float64))
    path = cache.module_path(resolved.name, key)
    loss(np.array([1.0]), np.array([0.0]))
    good = path.read_text()
    path.write_text(damage(good), errors="surrogateescape")
    assert not cache._intact(path)
    sys.modules.pop(f"_lossdsl_{path.stem}", None)
    rebuilt = compiler.Backend(resolved).module(np.dtype(np.float64))
    assert path.read_text() == good and cache._intact(path)
    out = np.empty(0)
    # rows [0, 1), the inputs and parameter, no weights, scale 1, no domain check, no per-element output
    assert rebuilt.loss_value(0, 1, np.array([3.0]), np.array([1.0]), 2.0, np.empty(0), 1.0, False, out) == 8.0


def test_two_processes_compiling_at_once(cache_dir):
    code = f"""
        import numpy as np, lossdsl
        print(lossdsl.compile({SPEC!r})(np.array([2.0]), np.array([0.0]), reduction="sum"))
    """
    env = {**os.environ, "LOSSDSL_CACHE_DIR": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["8.0", "8.0"]
    modules = list(cache_dir.glob("cached_sq_*.py"))
    assert len(modules) == 1 and cache._intact(modules[0])


@pytest.mark.parametrize("numba_cache_dir", [None, "numba"], ids=["beside the modules", "NUMBA_CACHE_DIR"])
def test_damaged_numba_cache_files_are_discarded(cache_dir, tmp_path_factory, numba_cache_dir):
    """Wherever Numba keeps its files (with NUMBA_CACHE_DIR: under it, in a folder named from the
    modules' folder), damaged ones are found, discarded and rewritten."""
    numba_dir = numba_cache_dir and tmp_path_factory.mktemp(numba_cache_dir)
    code = f"""
        import numpy as np, lossdsl
        print(lossdsl.compile({SPEC!r})(np.array([3.0]), np.array([1.0]), reduction="sum"))
    """
    first = _run(code, cache_dir, numba_dir)
    assert first.returncode == 0, first.stderr
    machine_code = list((numba_dir or cache_dir / "__pycache__").rglob("cached_sq_*.nb[ic]"))
    assert machine_code
    for path in machine_code:
        path.write_bytes(path.read_bytes()[:40])  # truncated pickles
    for _ in range(2):  # the second process finds the files the first one rewrote
        again = _run(code, cache_dir, numba_dir)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "8.0"
    assert all(len(path.read_bytes()) > 40 for path in machine_code)
