"""Gradient boosting with a loss written as a spec: xgboost trains on its generated gradient and Hessian.

Run as `python examples/xgboost_objective.py` (needs `pip install xgboost`). The spec is xgboost's
own pseudo-Huber error; lossdsl derives its first and second derivatives with SymPy and computes
both in one kernel, and the model it trains matches xgboost's built-in `reg:pseudohubererror`.
"""
from __future__ import annotations

import numpy as np
import xgboost

import lossdsl

PSEUDO_HUBER = """
loss pseudo_huber(pred, target)
    "delta^2 (sqrt(1 + (d/delta)^2) - 1): quadratic near the target, linear far from it, smooth everywhere."
    param delta = 1.0 where delta > 0
    pseudo_huber = delta^2 * (sqrt(1 + ((pred - target) / delta)^2) - 1)
"""


def main(verbose: bool = True) -> tuple[float, float]:
    """(test RMSE with the DSL objective, with xgboost's built-in one)."""
    loss = lossdsl.compile(PSEUDO_HUBER)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1200, 5))
    labels = features @ np.array([1.5, -2.0, 0.5, 0.0, 1.0]) + np.sin(3 * features[:, 0])
    labels += rng.standard_t(2, 1200) * 0.3  # heavy-tailed noise: what a robust loss is for
    dtrain, dtest = xgboost.DMatrix(features[:900], label=labels[:900]), xgboost.DMatrix(features[900:])
    params = {"max_depth": 4, "eta": 0.3, "base_score": 0.0, "nthread": 2}
    ours = xgboost.train(params, dtrain, num_boost_round=60, obj=loss.xgboost_objective())
    theirs = xgboost.train({**params, "objective": "reg:pseudohubererror"}, dtrain, num_boost_round=60)
    errors = tuple(float(np.sqrt(np.mean((m.predict(dtest) - labels[900:]) ** 2))) for m in (ours, theirs))
    if verbose:
        print(loss.explain())
        grad, hess = loss.grad_hess(np.array([-2.0, 0.0, 2.0]), np.zeros(3))
        print(f"at errors -2, 0, 2: gradient {grad}, second derivative {hess}")
        print(f"test RMSE: DSL objective {errors[0]:.4f}, xgboost's reg:pseudohubererror {errors[1]:.4f}")
    return errors


if __name__ == "__main__":
    main()
