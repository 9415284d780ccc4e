"""README documents every DSL function and every catalogue loss."""
import re
from pathlib import Path

import lossdsl
from lossdsl import errors
from lossdsl.frontend import registry
from lossdsl.symbolic.functions import FUNCTIONS, REDUCTIONS
from lossdsl.intrinsics import INTRINSICS

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_lists_every_function():
    missing = [name for name in [*FUNCTIONS, *REDUCTIONS, *INTRINSICS] if f"`{name}(" not in README]
    assert not missing


def _section(heading: str) -> list[str]:
    """README's lines under `heading`, up to the next heading of the same or a higher level."""
    lines = README.splitlines()
    assert heading in lines, f"README has no {heading!r} heading"
    level = len(heading.split()[0])
    body = []
    for line in lines[lines.index(heading) + 1:]:
        if re.match(rf"#{{1,{level}}} ", line):
            break
        body.append(line)
    return body


def _first_cells(lines: list[str]) -> list[str]:
    """The first cell of each table body row (header and separator rows left out)."""
    rows = [line for line in lines if line.startswith("|")]
    separator = re.compile(r"\|\s*-")
    return [re.split(r"(?<!\\)\|", row)[1] for row, following in zip(rows, rows[1:] + [""])
            if not separator.match(row) and not separator.match(following)]


def test_readme_functions_table_is_the_function_table():
    """The "### Functions" table lists each DSL function, and nothing the DSL lacks."""
    cells = _first_cells(_section("### Functions"))
    listed = [name for cell in cells for name in re.findall(r"`(\w+)\(", cell)]
    assert cells and all(re.search(r"`\w+\(", cell) for cell in cells), cells
    assert sorted(listed) == sorted(FUNCTIONS)


def _catalogue_rows() -> dict[str, list[str]]:
    """Catalogue table rows: loss name → the aliases in parentheses after it."""
    rows: dict[str, list[str]] = {}
    for cell in _first_cells(_section("## The catalogue")):
        name, *aliases = re.findall(r"`(\w+)`", cell)
        assert name not in rows, f"{name} has two rows"
        rows[name] = aliases
    return rows


def test_readme_catalogue_tables_are_the_catalogue():
    """Every loss has a row under "## The catalogue", and every row is a loss."""
    assert sorted(_catalogue_rows()) == lossdsl.catalogue()


def test_readme_catalogue_aliases_are_the_catalogues():
    """Each row lists its loss's aliases, every one of them and no other name."""
    listed = {alias: name for name, aliases in _catalogue_rows().items() for alias in aliases}
    assert listed == registry.aliases()


def test_every_error_readme_names_is_importable_from_lossdsl():
    named = set(re.findall(r"\b((?:Loss|Spec)[A-Za-z]*Error|UnknownLossError)\b", README))
    assert named, "README names no error class"
    missing = sorted(name for name in named if not hasattr(lossdsl, name))
    assert not missing


def test_every_error_class_is_exported():
    classes = [name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.LossError)]
    assert sorted(set(classes) - set(lossdsl.__all__)) == []


def test_grammar_cites_only_real_methods():
    grammar = (Path(__file__).parents[1] / "grammar" / "loss.lark").read_text()
    cited = re.findall(r"`((?:value|grad)[a-z_]*)", grammar)  # the call methods a comment may point at
    assert cited
    assert [name for name in cited if not hasattr(lossdsl.Loss, name)] == []
