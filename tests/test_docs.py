"""README documents every DSL function and every catalogue loss."""
import re
from pathlib import Path

import lossdsl
from lossdsl import errors
from lossdsl.symbolic.functions import FUNCTIONS, REDUCTIONS
from lossdsl.intrinsics import INTRINSICS

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_lists_every_function():
    missing = [name for name in [*FUNCTIONS, *REDUCTIONS, *INTRINSICS] if f"`{name}(" not in README]
    assert not missing


def test_readme_lists_every_catalogue_loss():
    missing = [name for name in lossdsl.catalogue() if f"| `{name}`" not in README]
    assert not missing


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
