"""Gradient boosting: a compiled elementwise loss as a custom objective of xgboost or LightGBM.

Both libraries ask for the gradient and the second derivative of the loss with respect to the raw
prediction, per row; `Loss.grad_hess` computes both in one fused kernel. Neither library is imported
here: the objectives only call the data set's `get_label` and `get_weight`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def xgboost_objective(loss, hessian_floor: float = 1e-6) -> Callable:
    """`obj(predt, dtrain)` for `xgboost.train(..., obj=...)`: the loss's gradient and second derivative
    with respect to the raw prediction (margins, for losses on logits), the DMatrix's labels as the
    second input and its weights, if any, as sample weights."""
    return lambda predt, dtrain: _step(loss, predt, dtrain, hessian_floor)


def lightgbm_objective(loss, hessian_floor: float = 1e-6) -> Callable:
    """`objective(preds, train_data)` for LightGBM (`params["objective"] = ...`), as `xgboost_objective`."""
    return lambda preds, train_data: _step(loss, preds, train_data, hessian_floor)


def _step(loss, predictions, data, hessian_floor: float):
    """grad_hess for a boosting library's data set (xgboost's DMatrix and LightGBM's Dataset both
    have get_label and get_weight; no weights is an empty array in one and None in the other)."""
    labels = np.asarray(data.get_label()).reshape(predictions.shape)
    weights = data.get_weight()
    weights = None if weights is None or np.size(weights) == 0 else np.asarray(weights).reshape(predictions.shape)
    return loss.grad_hess(predictions, labels, sample_weight=weights, hessian_floor=hessian_floor)
