"""symbolic/guards.py: the parameter tests under which a row value matters, which let kernels skip sums."""
import sympy

import lossdsl
from lossdsl.compiler import derive_plan
from lossdsl.symbolic.guards import MAX_TERMS, TRUE, nonzero, reduction_guards, uses


def test_cross_entropy_smoothing_means_are_needed_only_with_label_smoothing():
    plan = derive_plan(lossdsl.load("cross_entropy")._resolved)
    smoothing = next(p for p in plan.params if p.name == "label_smoothing")
    found = reduction_guards(plan, True)
    guards = {f"{n.op}({n.body})": found[n.symbol] for n in plan.forward if n.symbol in found}
    assert guards["logsumexp(logits)"] is sympy.true
    assert guards["mean(class_weight)"] == (smoothing > 0)
    assert guards["mean(class_weight*logits)"] == (smoothing > 0)


def test_a_test_on_anything_but_parameters_counts_as_always():
    a, x, p = sympy.symbols("a x p", real=True)
    expr = sympy.Piecewise((a, x > 0), (0, True)) + sympy.Piecewise((2 * a, p > 1), (0, True))
    assert uses(expr, a, {p}) == set(TRUE)
    assert uses(sympy.Piecewise((a, p > 1), (0, True)), a, {p}) == {frozenset({p > 1})}
    assert uses(expr, sympy.Symbol("b"), {p}) == set()


def test_conditions_stay_small_however_many_tests_a_spec_nests():
    a = sympy.Symbol("a", real=True)
    params = sympy.symbols("p0:12", real=True)
    expr = sum(sympy.Piecewise((a * k, q > k), (0, True)) for k, q in enumerate(params, 1))
    assert len(uses(expr, a, set(params))) <= MAX_TERMS
    assert nonzero(expr, set(params)) == set(TRUE)  # more than MAX_TERMS ways to be nonzero: always
    assert nonzero(sympy.Piecewise((a, params[0] > 1), (0, True)), set(params)) == {frozenset({params[0] > 1})}
