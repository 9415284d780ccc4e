"""The command-line tool."""
import subprocess
import sys

import pytest

from lossdsl.cli import main


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("bce ") and "(also l1_loss, mae)" in out


def test_show_grad_prints_the_gradient_and_the_kernel(capsys):
    assert main(["show", "focal", "--grad"]) == 0
    out = capsys.readouterr().out
    assert "dfocal/dp = alpha_t*(" in out
    assert "def loss_value_and_grad(" in out and "def loss_value(" not in out
    assert main(["show", "huber", "--latex", "-p", "delta=2"]) == 0
    assert "\\begin{cases}" in capsys.readouterr().out


def test_show_plan_prints_the_collectives_of_a_split_class_axis(capsys):
    assert main(["show", "linear_cross_entropy", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "all-reduce MAX  1 float64 per row: shift of" in out and "2 all-reduces, 48 bytes per row" in out
    assert main(["show", "huber", "--plan"]) == 2
    assert "huber has no class axis" in capsys.readouterr().err


def test_show_source_is_the_whole_module(capsys):
    assert main(["show", "bce_with_logits", "--source", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "F = np.float32" in out and "def _minimum(" in out and "fast_log1p(" in out and "def loss_value(" in out
    assert main(["show", "cross_entropy", "--source", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "@cuda.jit(cache=True)" in out and "def loss_rows(" in out and "_block_logsumexp(" in out


def test_compile_writes_modules(tmp_path, capsys):
    spec = tmp_path / "mine.loss"
    spec.write_text("loss mine(x, y)\n    mine = log_cosh(x - y)\n")
    assert main(["compile", str(spec), "-o", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["mine_float32.py", "mine_float64.py"]
    compile((tmp_path / "out" / "mine_float64.py").read_text(), "mine", "exec")


def test_check_prints_a_table(capsys):
    assert main(["check", "huber"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("gradient check of huber") and lines[-1].endswith("pass")


def test_errors_are_one_line_with_the_position(tmp_path, capsys):
    bad = tmp_path / "bad.loss"
    bad.write_text("loss bad(x)\n    bad = x +* 2\n")
    assert main(["show", str(bad)]) == 2
    assert f"{bad}:2:14: unexpected '*'" in capsys.readouterr().err
    assert main(["show", "hubber"]) == 2
    assert "did you mean huber" in capsys.readouterr().err
    assert main(["show", "huber", "-p", "delta=-1"]) == 2
    assert "breaks its constraint" in capsys.readouterr().err


def test_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "lossdsl", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "huber" in result.stdout


def test_bad_param_syntax():
    with pytest.raises(SystemExit):
        main(["show", "huber", "-p", "delta"])
