"""`lossdsl plot`: an image of losses and gradients; clear errors where there is nothing to draw."""
import pytest

from lossdsl.cli import main


def test_plot_writes_an_image(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    output = tmp_path / "losses.png"
    assert main(["plot", "huber", "bce_with_logits", "-p", "delta=0.5", "--range", "-2", "2", "-o", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and output.stat().st_size > 10_000


def test_plot_refuses_what_it_cannot_draw(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", "cross_entropy", "-o", str(tmp_path / "x.png")]) != 0
    assert "plot draws elementwise losses" in capsys.readouterr().err


def test_plot_without_matplotlib_says_so(tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["plot", "huber", "-o", str(tmp_path / "x.png")]) != 0
    assert "plotting needs matplotlib" in capsys.readouterr().err
