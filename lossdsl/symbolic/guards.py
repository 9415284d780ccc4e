"""Conditions on parameters under which a row value matters, so that kernels can leave out work.

A formula chosen by a parameter (`alpha*smooth if label_smoothing > 0 else 0`) leaves the sums it
alone uses (cross-entropy's mean(class_weight), mean(class_weight*logits)) unused for every call
whose parameter makes the other arm run; the default call is usually such a call. The codegen
copies a loop once for each truth value of such a condition (codegen/rows.py, `unswitched`), so a
sum wrapped as `body if condition else 0` costs nothing where the condition is false.

Conditions are kept as a small disjunction of conjunctions of the parameter tests found in
`Piecewise` arms: a set of frozensets, TRUE = {frozenset()} (always), FALSE = set() (never). They
over-approximate, never under: a test involving anything but parameters counts as true, and so
does a disjunction grown beyond MAX_TERMS terms (a hostile spec cannot make one grow without bound).
"""
from __future__ import annotations

import sympy

from .reductions import RowPlan, gradient_parts, needed

MAX_TERMS = 4
Condition = set  # of frozensets of sympy Booleans over parameters
TRUE: frozenset = frozenset({frozenset()})


def _capped(condition: Condition) -> Condition:
    if frozenset() in condition or len(condition) > MAX_TERMS:
        return set(TRUE)
    return condition


def _both(a: Condition, b: Condition) -> Condition:
    return _capped({x | y for x in a for y in b})


def _test(condition: sympy.Basic, params: set) -> frozenset:
    """A Piecewise arm's condition as a conjunction: itself where it is made of parameters, else none."""
    if condition is sympy.true or not condition.free_symbols or not condition.free_symbols <= params:
        return frozenset()
    return frozenset({condition})


def uses(expr: sympy.Expr, symbol: sympy.Symbol, params: set, seen: dict | None = None) -> Condition:
    """When `symbol` can change `expr`: FALSE where it does not appear, else the parameter tests of the
    Piecewise arms it lies under (TRUE where it appears in a test, or outside any arm)."""
    seen = {} if seen is None else seen
    if symbol not in expr.free_symbols:
        return set()
    if expr == symbol:
        return set(TRUE)
    if expr in seen:
        return seen[expr]
    found: Condition = set()
    if isinstance(expr, sympy.Piecewise):
        for arm, condition in expr.args:
            if symbol in condition.free_symbols:
                found = set(TRUE)
                break
            found |= _both(uses(arm, symbol, params, seen), {_test(condition, params)})
    else:
        for arg in expr.args:
            found |= uses(arg, symbol, params, seen)
    seen[expr] = _capped(found)
    return seen[expr]


def nonzero(expr: sympy.Expr, params: set) -> Condition:
    """When `expr` can be other than 0: the parameter tests of the arms of its Piecewise terms that are not 0."""
    if expr.is_zero:
        return set()
    if isinstance(expr, sympy.Piecewise):
        found: Condition = set()
        for arm, condition in expr.args:
            found |= _both(nonzero(arm, params), {_test(condition, params)})
        return _capped(found)
    if isinstance(expr, sympy.Add):
        return _capped(set().union(*(nonzero(a, params) for a in expr.args)))
    if isinstance(expr, sympy.Mul):
        found = set(TRUE)
        for factor in expr.args:
            found = _both(found, nonzero(factor, params))
        return found
    return set(TRUE)


def as_boolean(condition: Condition) -> sympy.Basic:
    return sympy.Or(*(sympy.And(*sorted(term, key=sympy.default_sort_key)) for term in condition))


def reduction_guards(plan: RowPlan, gradient: bool, outputs: bool = False) -> dict[sympy.Symbol, sympy.Basic]:
    """For each reduction over the class axis that a call uses, a condition on parameters alone outside
    which its value reaches nothing the call computes (sympy.true where it always may)."""
    params = set(plan.params)
    parts = gradient_parts(plan)
    reductions = needed(plan, gradient, outputs) + (list(parts.backward) if gradient else [])
    roots = [plan.value, *(e for _, e in plan.outputs if outputs)]
    listed = plan.listed.forward if plan.listed is not None else ()
    definitions = [(n.symbol, n.body + (n.order if n.order is not None else 0)) for n in (*reductions, *listed)]
    if gradient:
        roots += list(plan.grads) + ([e for _, _, e in plan.listed.scatters] if plan.listed is not None else [])
        definitions += list(parts.adjoints) + [(n.symbol, n.body) for n in parts.list_backward]
    defined = {symbol for symbol, _ in definitions}
    guard: dict[sympy.Symbol, Condition] = {s: set() for s in defined}
    for symbol in defined:
        for root in roots:
            guard[symbol] |= uses(root, symbol, params)
    for _ in range(len(definitions) + 1):  # until nothing grows: a definition's uses are guarded by its own guard
        changed = False
        for user, expr in definitions:
            for symbol in expr.free_symbols & defined:
                grown = _capped(guard[symbol] | _both(guard[user], uses(expr, symbol, params)))
                if grown != guard[symbol]:
                    guard[symbol], changed = grown, True
        if not changed:
            break
    return {n.symbol: as_boolean(_capped(guard[n.symbol])) for n in reductions}
