"""Stability rewrites: named rules that replace unstable patterns by stable forms.

Each rule looks at one SymPy node and returns a replacement or None. `stabilize`
applies the rules bottom-up until nothing changes. The symbolic stage runs it
before differentiation (on what the spec author wrote) and after it (derivatives
bring back sigmoids and exponentials). Every rule has a row in
tests/test_rewrites.py that checks both the form and the values at extreme inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy
from sympy.codegen.cfunctions import expm1, log1p

from .sympy_functions import (absolute, log1p_unit, log_cosh, log_of_base, log_sigmoid, minimum, power,
                              power_from_log, relu, sigmoid, softplus, tanh_from_exp)


@dataclass(frozen=True)
class Rule:
    name: str
    why: str
    apply: Callable[[sympy.Expr], sympy.Expr | None]


def _one_plus(expr: sympy.Expr) -> sympy.Expr | None:
    """`rest` when expr is 1 + rest, else None."""
    if isinstance(expr, sympy.Add) and sympy.S.One in expr.args:
        return sympy.Add(*[a for a in expr.args if a is not sympy.S.One]) if len(expr.args) > 1 else None
    return None


def _log_of_sigmoid(expr):
    if isinstance(expr, sympy.log) and isinstance(expr.args[0], sigmoid):
        return log_sigmoid(expr.args[0].args[0])
    return None


def _log_one_minus_sigmoid(expr):
    if isinstance(expr, sympy.log):
        rest = _one_plus(expr.args[0])
        if rest is not None:
            coeff, term = rest.as_coeff_Mul()
            if coeff == -1 and isinstance(term, sigmoid):
                return log_sigmoid(-term.args[0])
    return None


def _log_one_plus_exp(expr):
    if isinstance(expr, sympy.log):
        rest = _one_plus(expr.args[0])
        if isinstance(rest, sympy.exp):
            return softplus(rest.args[0])
    return None


def _log_one_plus(expr):
    if isinstance(expr, sympy.log):
        rest = _one_plus(expr.args[0])
        if rest is not None:
            return log1p(rest)
    return None


def _exp_minus_one(expr):
    if isinstance(expr, sympy.Add) and sympy.S.NegativeOne in expr.args:
        rest = [a for a in expr.args if a is not sympy.S.NegativeOne]
        if len(rest) == 1 and isinstance(rest[0], sympy.exp):
            return expm1(rest[0].args[0])
    return None


def _one_minus_sigmoid(expr):
    if isinstance(expr, sympy.Add) and len(expr.args) == 2 and sympy.S.One in expr.args:
        other = expr.args[0] if expr.args[1] is sympy.S.One else expr.args[1]
        coeff, term = other.as_coeff_Mul()
        if coeff == -1 and isinstance(term, sigmoid):
            return sigmoid(-term.args[0])
    return None


def _log_of_cosh(expr):
    if isinstance(expr, sympy.log) and isinstance(expr.args[0], sympy.cosh):
        return log_cosh(expr.args[0].args[0])
    return None


RULES: tuple[Rule, ...] = (
    Rule("log_sigmoid", "log(sigmoid(x)) → log_sigmoid(x): log of a sigmoid that underflows to 0 is -inf, "
         "log_sigmoid(x) = min(x,0) - log1p(exp(-|x|)) is exact (PyTensor's logsigm_to_softplus).", _log_of_sigmoid),
    Rule("log_one_minus_sigmoid", "log(1 - sigmoid(x)) → log_sigmoid(-x): 1 - sigmoid(x) rounds to 0 for x > 17 "
         "(float64).", _log_one_minus_sigmoid),
    Rule("softplus", "log(1 + exp(x)) → softplus(x): exp overflows for x > 709 (88 in float32).", _log_one_plus_exp),
    Rule("log1p", "log(1 + x) → log1p(x): 1 + x loses the digits of a small x.", _log_one_plus),
    Rule("expm1", "exp(x) - 1 → expm1(x): cancellation for small x.", _exp_minus_one),
    Rule("one_minus_sigmoid", "1 - sigmoid(x) → sigmoid(-x): cancellation when sigmoid(x) is near 1.",
         _one_minus_sigmoid),
    Rule("log_cosh", "log(cosh(x)) → log_cosh(x): cosh overflows for |x| > 710.", _log_of_cosh),
)


def stabilize(expr: sympy.Expr, rules: tuple[Rule, ...] = RULES,
              check: Callable[[sympy.Expr], object] | None = None) -> sympy.Expr:
    """Apply `rules` bottom-up until the expression stops changing. `check`, if given, sees each
    rewritten subexpression as soon as it is made: a lowering repeats its argument, so nested ones
    grow a tree exponentially, and the caller can stop it before SymPy walks it."""
    for _ in range(10):
        new = _rewrite(expr, rules, {}, check)
        if new == expr:
            return new
        expr = new
    return expr


def _rewrite(expr, rules, done: dict, check):
    """One bottom-up pass; `done` holds the subexpressions already rewritten, so a subexpression that
    occurs many times (a derivative repeats its function's arguments) is rewritten once."""
    if expr in done:
        return done[expr]
    result = expr
    if expr.args and not isinstance(expr, (sympy.Symbol, sympy.Number)):
        args = tuple(_rewrite(a, rules, done, check) for a in expr.args)
        if args != expr.args:
            result = expr.func(*args)
    for rule in rules:
        replacement = rule.apply(result)
        if replacement is not None:
            result = replacement
            break
    if check is not None:
        check(result)
    done[expr] = result
    return result


# --- lowering: stable primitives as expressions of shared pieces ------------------
#
# sigmoid, log_sigmoid and softplus of x and of -x all need exp(-|x|) and
# log1p(exp(-|x|)); written as opaque helpers each would call exp and log1p again
# (bce_with_logits' value and gradient use four of them). Lowered to these shared
# pieces just before CSE, the kernel computes each piece once. The forms are the
# helpers' own, so values (and NaN propagation) are unchanged.

def _abs_exp(x):
    return sympy.exp(-absolute(x))


def _log1p_unit(z):
    """log1p(z) for z in [0, 1], with the 1/(1 + z) a sigmoid of the same z computes."""
    return log1p_unit(z, 1 / (1 + z))


def _lower_sigmoid(expr):
    if isinstance(expr, sigmoid):
        x = expr.args[0]
        z = _abs_exp(x)
        return sympy.Piecewise((1 / (1 + z), x >= 0), (z / (1 + z), True))
    return None


def _lower_log_sigmoid(expr):
    if isinstance(expr, log_sigmoid):
        x = expr.args[0]
        return minimum(x, 0) - _log1p_unit(_abs_exp(x))
    return None


def _lower_softplus(expr):
    if isinstance(expr, softplus):
        x = expr.args[0]
        return relu(x) + _log1p_unit(_abs_exp(x))
    return None


def _lower_log_cosh(expr):
    if isinstance(expr, log_cosh):
        x = expr.args[0]
        return absolute(x) + _log1p_unit(sympy.exp(-2 * absolute(x))) - sympy.log(2)
    return None


def _lower_tanh(expr):
    if isinstance(expr, sympy.tanh):
        x = expr.args[0]
        return tanh_from_exp(x, sympy.exp(-2 * absolute(x)))
    return None


def _lower_power(expr):
    if isinstance(expr, power):
        x, e = expr.args
        return power_from_log(x, e, log_of_base(x))
    return None


LOWERINGS: tuple[Rule, ...] = (
    Rule("lower_sigmoid", "sigmoid(x) → 1/(1+z) or z/(1+z) with z = exp(-|x|), shared with its neighbours.",
         _lower_sigmoid),
    Rule("lower_log_sigmoid", "log_sigmoid(x) → min(x, 0) - log1p(z), z = exp(-|x|) (log1p_unit: z in [0, 1], "
         "with the 1/(1 + z) of a sigmoid beside it).", _lower_log_sigmoid),
    Rule("lower_softplus", "softplus(x) → relu(x) + log1p(z), z = exp(-|x|) (log1p_unit).", _lower_softplus),
    Rule("lower_log_cosh", "log_cosh(x) → |x| + log1p(exp(-2|x|)) - log 2 (log1p_unit).", _lower_log_cosh),
    Rule("lower_tanh", "tanh(x) → from z = exp(-2|x|): sign(x) (1 - 2z/(1 + z)) for |x| > 0.625, the exp "
         "shared with log_cosh (the gradient of log_cosh is tanh).", _lower_tanh),
    Rule("lower_power", "x^e (runtime e) → exp(e log|x|) from a log|x| shared with x^(e-1), its derivative.",
         _lower_power),
)
