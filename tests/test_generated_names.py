"""Spec names never collide with the names generated code uses, on either target, however long they
are; a `head linear` that cannot apply is a spec error at its loss."""
import ast

import numpy as np
import pytest

import lossdsl
from lossdsl.symbolic.derive import safe_name

ELEMENTWISE = "loss named({x}, y)\n    {x}_sq = ({x} - y)^2\n    named = {x}_sq + {x}\n"
ROWS = "loss named({x}[c], y)\n    {x}_lse = logsumexp({x}, c)\n    named = {x}_lse - {x}[y]\n"


def _module_names(source: str) -> set[str]:
    """Names a generated module binds at its top level (imports, assignments, functions)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If):  # the CUDA module binds its math functions under a condition
            names |= _module_names(ast.unparse(node.body[0])) | _module_names(ast.unparse(node.orelse[0]))
    return names


@pytest.mark.parametrize("template", [ELEMENTWISE, ROWS])
@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_every_name_a_generated_module_binds_is_renamed_in_specs(template, target):
    loss = lossdsl.compile(template.format(x="x"))
    bound = {n for n in _module_names(loss.source(target)) if not n.startswith("_")}
    kernels = {"loss_value", "loss_value_and_grad", "loss_value_and_grad_in_place"}
    # kernel names: spec names are never bound at the top level
    bound -= kernels | {f"{k}_lanes" for k in kernels} | {"loss_rows", "loss_value_and_grad_outputs"}
    assert bound and all(safe_name(n) != n for n in bound)


@pytest.mark.parametrize("name", ["cuda", "THREADS", "np", "F", "math", "numba", "kernel", "store", "x" * 5000])
def test_a_spec_may_use_any_name(name):
    """`cuda` and `THREADS` broke the CUDA target (UnboundLocalError), a 5,000-character name LLVM."""
    x, y = np.array([0.5, 2.0, -1.0]), np.array([0.0, 1.0, 1.0])
    loss = lossdsl.compile(ELEMENTWISE.format(x=name))
    expected_value, expected_grad = ((x - y) ** 2 + x).mean(), (2 * (x - y) + 1) / 3
    for device in ("cpu", "cuda"):  # CUDA under Numba's simulator here (tests/conftest.py)
        value, grad = loss.value_and_grad(x, y, device=device)
        np.testing.assert_allclose(value, expected_value, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-12)


def test_long_names_stay_distinct():
    long = "a" * 100
    assert len({safe_name(long), safe_name(long + "b"), safe_name(long[:64]), safe_name(safe_name(long))}) == 4
    assert len(safe_name(long)) < 64


def test_head_linear_without_a_class_axis_is_a_spec_error():
    text = "loss squared(x, y)\n    head linear\n    squared = (x - y)^2\n"
    with pytest.raises(lossdsl.SpecTypeError, match="head linear") as raised:
        lossdsl.compile(text)
    assert (raised.value.file, raised.value.line) == ("<string>", 1)


def test_a_loss_name_of_any_length_is_cached():
    """A loss name of 190+ characters gave a raw OSError: File name too long (the cache's file names)."""
    name = "n" * 300
    loss = lossdsl.compile(f"loss {name}(x, y)\n    {name} = (x - y)^2\n")
    np.testing.assert_allclose(loss(np.array([1.0, 3.0]), np.array([0.0, 1.0])), 2.5, rtol=1e-12)
