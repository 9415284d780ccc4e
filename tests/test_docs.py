"""README documents every DSL function and every catalogue loss."""
from pathlib import Path

import lossdsl
from lossdsl.functions import FUNCTIONS, REDUCTIONS
from lossdsl.intrinsics import INTRINSICS

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_lists_every_function():
    missing = [name for name in [*FUNCTIONS, *REDUCTIONS, *INTRINSICS] if f"`{name}(" not in README]
    assert not missing


def test_readme_lists_every_catalogue_loss():
    missing = [name for name in lossdsl.catalogue() if f"| `{name}`" not in README]
    assert not missing
