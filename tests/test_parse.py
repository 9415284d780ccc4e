"""Stage 1: the grammar and the parser's errors."""
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossdsl.frontend import ir
from lossdsl.errors import LossSpecError, SpecSyntaxError
from lossdsl.frontend.parse import parse
from lossdsl.frontend.resolve import resolve

FOCAL = (Path(__file__).parents[1] / "examples" / "focal_design_card.loss").read_text()


def test_design_card_example_parses_into_its_parts():
    (loss,) = parse(FOCAL, "focal_design_card.loss")
    assert loss.name == "focal" and [i.name for i in loss.inputs] == ["p", "y"]
    assert loss.doc.startswith("Focal loss on probabilities")
    assert [p.name for p in loss.params] == ["alpha", "gamma"]
    assert loss.params[0].constraint == ir.Compare(("<=", "<="), (ir.Num(0), ir.Name("alpha"), ir.Num(1)))
    body = loss.locals[-1].expr
    assert isinstance(body, ir.IfElse) and body.cond == ir.Compare(("==",), (ir.Name("y"), ir.Num(1)))
    assert loss.locals[-1].pos == ir.Pos(7, 5)
    assert "focal = -alpha*(1-p)^gamma*log(p) if y==1 else -(1-alpha)*p^gamma*log(1-p)" in FOCAL


@pytest.mark.parametrize("text, expected", [
    ("-x^2", "-x^2"),                       # unary minus binds looser than ^
    ("2^-1", "2^(-1)"),
    ("a**b**c", "a^b^c"),                   # ** is ^, right-associative
    ("a - b - c", "a - b - c"),
    ("a - (b - c)", "a - (b - c)"),
    ("a / b * c", "a / b * c"),
    ("x if a < b and not c >= d or e != f else y", "x if a < b and not c >= d or e != f else y"),
    ("a if c1 else b if c2 else d", "a if c1 else b if c2 else d"),
    ("1e-8 + .5 + 3.", "1e-08 + 0.5 + 3"),
    ("huber(a, b, delta=2)", "huber(a, b, delta=2)"),
    ("x[y]", "x[y]"),
])
def test_expressions_round_trip_through_the_printer(text, expected):
    (loss,) = parse(f"loss t(x)\n    t = {text}\n")
    assert ir.format_expr(loss.locals[0].expr) == expected


def test_wrt_aliases_domains_and_multiple_losses():
    text = """loss a(x in (0, 1), y in {-1, 1}, z in [0, inf)) wrt x, z
    alias first, premier
    a = x*y*z
loss b(u)
    b = a(u, 1, u)
"""
    first, second = parse(text)
    assert first.wrt == ("x", "z") and first.aliases == ("first", "premier")
    assert first.inputs[0].domain == ir.Domain(0.0, 1.0, True, True)
    assert first.inputs[1].domain.choices == (-1.0, 1.0)
    assert first.inputs[2].domain == ir.Domain(0.0, float("inf"), False, True)
    assert second.name == "b"


def test_line_continuation_and_comments():
    (loss,) = parse("loss t(x)   # header comment\n\n    # a comment line\n    t = x + \\\n        1\n")
    assert ir.format_expr(loss.locals[0].expr) == "x + 1"


@pytest.mark.parametrize("text, line, column, words", [
    ("loss t(x)\n    t = (x + 1\n", 2, 15, "unexpected end of line"),
    ("loss t(x)\n    t = x +* 2\n", 2, 12, "unexpected '*'"),
    ('loss t(x)\n    t = __import__("os")\n', 2, 9, "unexpected character '_'"),
    ("loss t(x)\n    t = x; 1\n", 2, 10, "unexpected character ';'"),
    ("loss t(x)\n    t = x $ 2\n", 2, 11, "unexpected character '$'"),
    ("", 1, 1, "at least one `loss"),
    ("   \n# only a comment\n", 1, 1, "at least one `loss"),
    ("loss t(x in (2, 1))\n    t = x\n", 1, 10, "empty interval"),
    ("loss t(x)\n    t = f(a=1, x)\n", 2, 9, "positional argument after a keyword"),
    ("loss t(x)\n", 1, 10, "unexpected end of file"),
])
def test_syntax_errors_say_where(text, line, column, words):
    with pytest.raises(SpecSyntaxError) as info:
        parse(text, "bad.loss")
    error = info.value
    assert (error.file, error.line, error.column) == ("bad.loss", line, column)
    assert words in error.message
    assert str(error).startswith(f"bad.loss:{line}:{column}: ")


def test_binary_junk_is_a_syntax_error():
    with pytest.raises(SpecSyntaxError, match="not UTF-8"):
        parse(b"\xff\xfe\x00loss", "junk.loss")
    with pytest.raises(SpecSyntaxError):
        parse("loss t(x)\n    t = x \x00\n")


def test_error_shows_the_line_with_a_caret():
    with pytest.raises(SpecSyntaxError) as info:
        parse("loss t(x)\n    t = x +* 2\n")
    assert info.value.context.splitlines() == ["        t = x +* 2", "               ^"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=60)
       | st.lists(st.sampled_from(["loss", "t", "(", ")", "x", ",", "=", "\n", "    ", "+", "^", "if", "else",
                                   "param", "1.5", "where", "<=", '"doc"', "[", "]", "{", "}", "in", "-"]),
                  max_size=30).map("".join))
def test_random_text_raises_only_lossspecerror(text):
    """Parsing and resolving arbitrary text either works or raises LossSpecError, nothing else."""
    try:
        losses = parse(text)
        table = {loss.name: loss for loss in losses}
        for loss in losses:
            resolve(loss, {}, lambda name, file: table.get(name), text if isinstance(text, str) else None)
    except LossSpecError:
        pass
