"""The driver: `trace` runs every stage and keeps what each made; each agrees with what a loaded loss
uses, and a module's kind and target are separate, checked choices."""
import numpy as np
import pytest
import sympy

import lossdsl
from lossdsl import compiler
from lossdsl.runtime.protocol import Kind, Target
from lossdsl.frontend import ir
from lossdsl.frontend.resources import specs_dir
from lossdsl.runtime.protocol import REDUCTIONS, LossKind

HUBER = (specs_dir() / "huber.loss").read_text()
CROSS_ENTROPY = (specs_dir() / "cross_entropy.loss").read_text()


def test_trace_keeps_each_stage_and_they_agree_with_the_loaded_loss():
    stages = compiler.trace(HUBER, None, "huber.loss", delta=2.0)
    assert isinstance(stages.definition, ir.LossDef) and stages.definition.name == "huber"
    assert stages.resolved.name == "huber" and dict(stages.resolved.values)["delta"] == 2.0
    assert stages.source == stages.loss.source("cpu", "float64")
    assert stages.loss.formula == stages.plan.readable()[0]
    x, t = np.array([0.5, 3.0, -4.0]), np.zeros(3)
    error = np.abs(x - t)
    reference = np.where(error <= 2.0, 0.5 * error**2, 2.0 * (error - 0.5 * 2.0))  # PyTorch's HuberLoss(delta=2)
    np.testing.assert_allclose(stages.loss(x, t, reduction="none"), reference)


def test_trace_of_each_kind_prints_that_kind():
    blocks = compiler.trace(CROSS_ENTROPY, "cross_entropy", kind=Kind.BLOCKS, dtype="float32")
    assert all(f"def {k}(" in blocks.source for k in ("loss_block_pass", "loss_block_value", "loss_block_grad"))
    assert "np.float32" in blocks.source
    hessian = compiler.trace(HUBER, kind="grad_hess")
    assert "def loss_grad_hess(" in hessian.source
    cuda = compiler.trace(HUBER, target="cuda")
    assert "@cuda.jit" in cuda.source


@pytest.mark.parametrize("text, kind, target, error", [
    (HUBER, Kind.BLOCKS, Target.CPU, lossdsl.LossInputError),  # blocks are for a class axis
    (CROSS_ENTROPY, Kind.GRAD_HESS, Target.CPU, lossdsl.LossInputError),  # grad_hess for elementwise losses
    (CROSS_ENTROPY, Kind.BLOCKS, Target.CUDA, ValueError),  # block kernels are CPU only
    (HUBER, "fused", Target.CPU, ValueError),
    (HUBER, Kind.LOSS, "tpu", ValueError),
])
def test_a_kind_or_target_that_does_not_apply_is_refused(text, kind, target, error):
    with pytest.raises(error):
        compiler.trace(text, kind=kind, target=target)


def test_an_intrinsic_loss_is_traced_by_its_parts():
    with pytest.raises(lossdsl.LossInputError, match="intrinsic"):
        compiler.trace((specs_dir() / "ctc.loss").read_text())


def test_every_kind_of_loss_states_its_signature_and_reductions():
    """Adapters and the CLI read `signature`; its reductions are the ones the loss accepts."""
    cases = {LossKind.ELEMENTWISE: lossdsl.load("huber"), LossKind.ROWS: lossdsl.load("cross_entropy"),
             LossKind.HEAD: lossdsl.load("linear_cross_entropy"), LossKind.SEQUENCE: lossdsl.load("ctc")}
    for kind, loss in cases.items():
        signature = loss.signature
        assert signature.kind is kind and signature.name == loss.name
        assert signature.reductions == REDUCTIONS[kind]
        assert set(signature.wrt) <= set(signature.call_inputs)
    head = cases[LossKind.HEAD].signature
    assert head.call_inputs[:2] == ("input", "linear_weight") and head.axis == "c"
    with pytest.raises(lossdsl.LossInputError, match="reduction must be 'mean', 'mean_or_zero', 'sum' or 'none'"):
        head.check_reduction("batch")
    assert cases[LossKind.ROWS].signature.labels == ("y",)
    assert isinstance(cases[LossKind.ELEMENTWISE].formula, sympy.Expr)


def test_a_function_of_sympys_is_one_table_row_with_its_template():
    """A row built from SymPy names how it is printed; SymPy's other functions are refused, not printed as
    bare names Numba cannot resolve (PythonCodePrinter would print atan(x))."""
    from lossdsl.codegen.printer import NumbaPrinter, UnsupportedExpression
    from lossdsl.symbolic.functions import FUNCTIONS
    native = [f for f in FUNCTIONS.values() if f.build.startswith("sympy.") and f.name != "sqrt"]  # sqrt: a power
    assert native and all(f.numba for f in native)
    x = sympy.Symbol("x", real=True)
    assert NumbaPrinter().doprint(sympy.cosh(x)) == "math.cosh(x)"
    with pytest.raises(UnsupportedExpression, match="atan"):
        NumbaPrinter().doprint(sympy.atan(x))


@pytest.mark.parametrize("name, kind, target", [("huber", Kind.LOSS, Target.CPU), ("huber", Kind.LOSS, Target.CUDA),
                                                ("huber", Kind.GRAD_HESS, Target.CPU),
                                                ("cross_entropy", Kind.LOSS, Target.CPU),
                                                ("cross_entropy", Kind.BLOCKS, Target.CPU)])
def test_every_module_declares_its_kernels_arguments(name, kind, target):
    """The runtime binds arguments by the names a module declares; they are the kernels' own, in order."""
    import ast

    from lossdsl.runtime.protocol import bind
    source = compiler.build(lossdsl.load(name)._resolved, np.dtype("float64"), kind, target)
    tree = ast.parse(source)
    declared = ast.literal_eval(next(node.value for node in tree.body if isinstance(node, ast.Assign)
                                     and getattr(node.targets[0], "id", "") == "KERNELS"))
    defined = {node.name: [a.arg for a in node.args.args] for node in tree.body if isinstance(node, ast.FunctionDef)
               and node.name.startswith("loss_")}
    own = {"__result"} if target is Target.CUDA else {"__start", "__stop"}
    assert set(defined) <= set(declared)
    for kernel, arguments in defined.items():
        assert list(declared[kernel]) == [a for a in arguments if a not in own]
    module = type("Module", (), {"KERNELS": declared})
    first = next(iter(defined))
    with pytest.raises(lossdsl.LossError, match="internal error"):
        bind(module, first, {})
