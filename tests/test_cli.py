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
    assert "F = np.float32" in out and "def _minimum(" in out and "fast_log1p_unit(" in out and "def loss_value(" in out
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


@pytest.mark.parametrize("args", [["dpo"], ["kto", "-p", "beta=0.5"], ["orpo"], ["gspo"]],
                         ids=["dpo", "kto", "orpo", "gspo"])
def test_check_through_the_sequences_of_a_policy(args, capsys):
    assert main(["check", *args, "--sequences"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("logits") and lines[-1].endswith("pass")


def test_check_through_the_sequences_finds_a_wrong_gradient(tmp_path, capsys):
    """A stop-gradient the value does not have (the finite differences see chosen_logp^2 move): FAIL."""
    spec = tmp_path / "wrong.loss"
    spec.write_text("loss wrong(chosen_logp, rejected_logp) wrt chosen_logp, rejected_logp\n"
                    "    wrong = detach(chosen_logp)^2 - rejected_logp\n")
    assert main(["check", str(spec), "--sequences"]) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("FAIL")


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


def test_list_columns_fit_the_longest_name(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert "linear_cross_entropy_probs" in names
    width = max(map(len, names)) + 2
    assert all(line[:width].rstrip() == name and line[width] != " " for line, name in zip(lines, names))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("lossdsl: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_ordinary_mistakes_are_one_line_with_status_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["compile", "huber", "-o", str(blocker / "sub")]) == 2  # below a file: unwritable, even for root
    assert "cannot write" in _one_error_line(capsys)
    assert main(["compile", "huber", "-o", str(blocker)]) == 2
    assert "it is a file, not a folder" in _one_error_line(capsys)
    for points in ("-5", "0", "many"):
        with pytest.raises(SystemExit) as exit:
            main(["check", "huber", "--points", points])
        assert exit.value.code == 2 and "--points: expected an integer of at least 1" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as exit:
        main(["show", "huber", "-p", "delta"])
    assert exit.value.code == 2 and "expected NAME=VALUE" in _one_error_line(capsys)
    assert main(["show", "huber", "-p", "nonexistent=3"]) == 2
    assert "huber has no parameter 'nonexistent'; its parameters are delta" in _one_error_line(capsys)


def test_plot_mistakes_are_one_line_with_status_2(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", "huber", "-o", str(tmp_path / "missing" / "x.png")]) == 2
    assert "is not a folder" in _one_error_line(capsys)
    assert main(["plot", "huber", "-o", str(tmp_path / "x.xyz")]) == 2
    assert "matplotlib writes no .xyz files; it writes" in _one_error_line(capsys)
    assert main(["plot", "huber", "-o", str(tmp_path)]) == 2
    assert "it is a folder" in _one_error_line(capsys)
    assert main(["plot", "huber", "log_cosh", "-p", "nonexistent=3", "-o", str(tmp_path / "x.png")]) == 2
    assert "no loss here has a parameter 'nonexistent'; their parameters are delta" in _one_error_line(capsys)
    assert main(["plot", "huber", "--range", "3", "-3", "-o", str(tmp_path / "x.png")]) == 2
    assert "--range 3 -3: LOW must be below HIGH" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as exit:
        main(["plot", "huber", "--range", "nan", "3", "-o", str(tmp_path / "x.png")])
    assert exit.value.code == 2 and "expected a finite number" in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())


TWO_LOSSES = """\
loss first(x, y)
    param name = 1.0
    first = name*(x - y)^2
loss second(x, y)
    alias other
    param file = 1.0
    second = file*abs(x - y)
"""


def test_a_name_chooses_among_a_files_losses(tmp_path, capsys):
    import lossdsl
    spec = tmp_path / "two.loss"
    spec.write_text(TWO_LOSSES)
    assert lossdsl.load(spec).name == "second"
    assert lossdsl.load(spec, "first").name == lossdsl.load(f"{spec}::first").name == "first"
    assert lossdsl.load(f"{spec}::first", name=3.0).params == {"name": 3.0}  # `name` stays a loss parameter
    assert lossdsl.load(spec, "other", file=2.0).params == {"file": 2.0}
    listed = r"has no loss named 'third'; it defines first, second \(also other\)"
    with pytest.raises(lossdsl.UnknownLossError, match=listed):
        lossdsl.load(f"{spec}::third")
    with pytest.raises(lossdsl.UnknownLossError, match="chooses among a file's losses"):
        lossdsl.load("huber", "first")
    assert main(["show", f"{spec}::first", "-p", "name=2"]) == 0
    assert capsys.readouterr().out.startswith("loss first(x, y)")
    assert main(["compile", f"{spec}::first", "-o", str(tmp_path / "out"), "--dtype", "float64"]) == 0
    assert (tmp_path / "out" / "first_float64.py").is_file()
    assert main(["check", f"{spec}::third"]) == 2
    assert f"{spec} has no loss named 'third'" in capsys.readouterr().err


def test_compile_names_the_file_in_its_errors():
    import lossdsl
    with pytest.raises(lossdsl.SpecSyntaxError) as error:
        lossdsl.compile("loss bad(x)\n    bad = x +* 2\n", None, "mine.loss")
    assert str(error.value).startswith("mine.loss:2:14: unexpected '*'") and error.value.file == "mine.loss"
    with pytest.raises(lossdsl.UnknownLossError, match="^mine.loss has no loss named 'third'"):
        lossdsl.compile(TWO_LOSSES, "third", "mine.loss")
    assert lossdsl.compile(TWO_LOSSES, "first", "mine.loss", name=2.0).params == {"name": 2.0}
    assert lossdsl.compile(TWO_LOSSES, None, "mine.loss", file=3.0).params == {"file": 3.0}  # a parameter
