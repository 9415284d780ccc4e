"""Gradient boosting: grad_hess against closed forms, and real xgboost runs with DSL objectives."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError

X = np.linspace(-4, 4, 41)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, target, gradient, hessian", [
    ("mse", 0.5, lambda x, t: 2 * (x - t), lambda x, t: np.full_like(x, 2.0)),
    ("huber", 0.5, lambda x, t: np.clip(x - t, -1, 1), lambda x, t: np.where(np.abs(x - t) < 1, 1.0, 1e-6)),
    ("log_cosh", 0.5, lambda x, t: np.tanh(x - t), lambda x, t: 1 - np.tanh(x - t) ** 2),
    ("bce_with_logits", 1.0, lambda x, t: _sigmoid(x) - t, lambda x, t: _sigmoid(x) * (1 - _sigmoid(x))),
    ("l1", 0.5, lambda x, t: np.sign(x - t), lambda x, t: np.full_like(x, 1e-6)),  # no curvature: the floor
])
def test_grad_hess_against_closed_forms(load_loss, name, target, gradient, hessian, dtype):
    x = X.astype(dtype)
    t = np.full_like(x, target)
    grad, hess = load_loss(name).grad_hess(x, t)
    assert grad.dtype == dtype and hess.dtype == dtype and grad.shape == x.shape
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grad, gradient(X, target), rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(hess, hessian(X, target), rtol=tolerance, atol=tolerance)


def test_grad_hess_weights_floor_and_errors(load_loss):
    mse = load_loss("mse")
    w = np.linspace(0.5, 2, X.size)
    grad, hess = mse.grad_hess(X, np.zeros_like(X), sample_weight=w)
    np.testing.assert_allclose(grad, 2 * X * w)
    np.testing.assert_allclose(hess, 2 * w)
    _, hess = load_loss("l1").grad_hess(X, np.zeros_like(X), hessian_floor=0.25)
    assert np.all(hess == 0.25)
    with pytest.raises(LossInputError, match="grad_hess is for elementwise losses"):
        load_loss("cross_entropy").grad_hess(np.zeros((2, 3)), np.zeros(2, int))


PSEUDO_HUBER = """
loss pseudo_huber(pred, target)
    "xgboost's reg:pseudohubererror: delta^2 (sqrt(1 + (d/delta)^2) - 1)."
    param delta = 1.0 where delta > 0
    pseudo_huber = delta^2 * (sqrt(1 + ((pred - target) / delta)^2) - 1)
"""


def test_xgboost_trains_with_a_dsl_pseudo_huber_like_its_own():
    xgboost = pytest.importorskip("xgboost")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1200, 5))
    labels = features @ np.array([1.5, -2.0, 0.5, 0.0, 1.0]) + np.sin(3 * features[:, 0]) + rng.normal(0, 0.3, 1200)
    train, test = slice(0, 900), slice(900, None)
    dtrain = xgboost.DMatrix(features[train], label=labels[train])
    dtest = xgboost.DMatrix(features[test])
    params = {"max_depth": 4, "eta": 0.3, "base_score": 0.0, "nthread": 2}
    ours = xgboost.train(params, dtrain, num_boost_round=60,
                         obj=lossdsl.compile(PSEUDO_HUBER).xgboost_objective())
    theirs = xgboost.train({**params, "objective": "reg:pseudohubererror"}, dtrain, num_boost_round=60)

    def rmse(model):
        return float(np.sqrt(np.mean((model.predict(dtest) - labels[test]) ** 2)))

    assert rmse(ours) < 0.5 * float(np.std(labels[test]))  # it learned
    assert abs(rmse(ours) - rmse(theirs)) < 0.05 * rmse(theirs)  # within a few percent of the built-in


def test_xgboost_trains_a_classifier_with_the_dsl_focal_loss():
    xgboost = pytest.importorskip("xgboost")
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1500, 4))
    labels = (features[:, 0] + 0.5 * features[:, 1] ** 2 - 0.5 + rng.normal(0, 0.3, 1500) > 0).astype(float)
    dtrain = xgboost.DMatrix(features[:1000], label=labels[:1000])
    model = xgboost.train({"max_depth": 3, "eta": 0.3, "base_score": 0.0, "nthread": 2}, dtrain, num_boost_round=60,
                          obj=lossdsl.load("sigmoid_focal", gamma=2.0).xgboost_objective())
    margins = model.predict(xgboost.DMatrix(features[1000:]), output_margin=True)
    accuracy = float(np.mean((margins > 0) == (labels[1000:] == 1)))
    assert accuracy > 0.85


def test_lightgbm_trains_with_a_dsl_objective_like_its_own():
    lightgbm = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(2)
    features = rng.normal(size=(1200, 5))
    labels = features @ np.array([1.0, -1.0, 2.0, 0.0, 0.5]) + rng.normal(0, 0.3, 1200)
    params = {"learning_rate": 0.2, "num_leaves": 15, "verbose": -1, "num_threads": 2, "boost_from_average": False}

    def rmse(objective):
        data = lightgbm.Dataset(features[:900], label=labels[:900])
        model = lightgbm.train({**params, "objective": objective}, data, num_boost_round=60)
        return float(np.sqrt(np.mean((model.predict(features[900:]) - labels[900:]) ** 2)))

    ours, theirs = rmse(lossdsl.load("mse").lightgbm_objective()), rmse("l2")
    assert ours < 0.5 * float(np.std(labels[900:]))
    assert abs(ours - theirs) < 0.05 * theirs  # mse = 2 x l2: gradient and Hessian doubled, the same leaves


def test_xgboost_tweedie_objective_is_its_built_in_reg_tweedie():
    # the same trees, round after round, when gradient and Hessian are XGBoost's own (margins equal)
    xgboost = pytest.importorskip("xgboost")
    rng = np.random.default_rng(3)
    features = rng.normal(size=(1000, 4))
    mean = np.exp(0.5 * features[:, 0] - 0.3 * features[:, 1])
    claims = rng.poisson(mean)
    labels = np.where(claims > 0, rng.gamma(2.0 * np.maximum(claims, 1), 0.5), 0.0)
    dtrain = xgboost.DMatrix(features, label=labels, base_margin=np.zeros(1000))
    params = {"max_depth": 3, "eta": 0.1, "nthread": 2}
    ours = xgboost.train(params, dtrain, num_boost_round=30,
                         obj=lossdsl.load("tweedie", variance_power=1.3).xgboost_objective(hessian_floor=0.0))
    theirs = xgboost.train({**params, "objective": "reg:tweedie", "tweedie_variance_power": 1.3}, dtrain,
                           num_boost_round=30)
    dtest = xgboost.DMatrix(features, base_margin=np.zeros(1000))
    np.testing.assert_allclose(ours.predict(dtest, output_margin=True), theirs.predict(dtest, output_margin=True),
                               rtol=1e-4, atol=1e-4)
