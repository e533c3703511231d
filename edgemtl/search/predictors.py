"""One cheap predictor per objective, as LINAS does: the search's inner loop asks them instead of evaluating.

Each predictor maps a configuration (its multipliers, stages then decoders, and their pairwise products: MACs grow
with the product of a layer's input and output widths) to one objective. Two candidates, ridge regression and an
RBF support-vector regressor, are scored by k-fold cross-validation on the configurations evaluated so far; the one
with the lower mean absolute percentage error is kept and refitted on all of them. Its cross-validated MAPE and
Kendall tau (does it rank configurations as the real evaluations do?) are reported with the search.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Any

import numpy as np
import optuna
from scipy.stats import kendalltau
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR

from edgemtl.model.widths import WidthConfig, WidthSpace
from edgemtl.search.study import from_params, param_names

MIN_POINTS = 4        # fewer evaluated configurations than this cannot be cross-validated
EXTRAPOLATION = 0.25  # how far past the evaluated range (a share of it) a prediction may go


def features(space: WidthSpace, configs: list[WidthConfig]) -> np.ndarray:
    """Multipliers (stages then decoders, the space's order) and their pairwise products, one row per configuration."""
    raw = np.array([[c.encoder[name] for name in space.stages] + [c.decoders[name] for name in space.decoders]
                    for c in configs], dtype=np.float64)
    pairs = [raw[:, i] * raw[:, j] for i, j in combinations_with_replacement(range(raw.shape[1]), 2)]
    return np.column_stack([raw, *pairs])


def _candidates() -> dict[str, Any]:
    return {
        "ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 3, 15))),
        "svr": TransformedTargetRegressor(make_pipeline(StandardScaler(), SVR(kernel="rbf", C=10.0, gamma="scale")),
                                          transformer=StandardScaler()),
    }


def mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    scale = np.maximum(np.abs(actual), 1e-12)
    return float(np.mean(np.abs(actual - predicted) / scale))


@dataclass
class Predictor:
    """The kept regressor for one objective and how well it did in cross-validation."""

    objective: str
    kind: str                      # "ridge" or "svr"
    mape: float                    # cross-validated, the kept candidate
    kendall_tau: float             # cross-validated rank agreement with the real evaluations
    candidates_mape: dict[str, float]
    points: int
    regressor: Any
    space: WidthSpace
    bounds: tuple[float, float]    # what the evaluated values span, widened by EXTRAPOLATION on each side

    def predict(self, configs: list[WidthConfig]) -> np.ndarray:
        """Predictions held within the evaluated range (widened): a regressor extrapolating far past what was
        evaluated (a negative RMSE, a MAC count below zero) would only mislead the search."""
        return np.clip(self.regressor.predict(features(self.space, configs)), *self.bounds)

    def summary(self) -> dict[str, Any]:
        return {"model": self.kind, "mape": self.mape, "kendall_tau": self.kendall_tau,
                "candidates_mape": self.candidates_mape, "points": self.points}


def fit_predictor(objective: str, space: WidthSpace, configs: list[WidthConfig], values: list[float],
                  seed: int = 0) -> Predictor:
    """Cross-validate ridge and RBF-SVR on (configs, values), keep the better, refit it on everything."""
    if len(configs) < MIN_POINTS:
        raise ValueError(f"a predictor needs at least {MIN_POINTS} evaluated configurations, got {len(configs)}")
    x, y = features(space, configs), np.asarray(values, dtype=np.float64)
    folds = KFold(n_splits=min(5, len(configs)), shuffle=True, random_state=seed)
    scored = {}
    for kind, regressor in _candidates().items():
        predicted = cross_val_predict(regressor, x, y, cv=folds)
        tau = kendalltau(y, predicted).statistic if np.ptp(y) > 0 else 1.0
        scored[kind] = (mape(y, predicted), float(np.nan_to_num(tau)))
    kind = min(scored, key=lambda name: scored[name][0])
    regressor = _candidates()[kind].fit(x, y)
    span = float(np.ptp(y)) or abs(float(y[0])) or 1.0
    low, high = float(y.min()) - EXTRAPOLATION * span, float(y.max()) + EXTRAPOLATION * span
    if y.min() > 0:   # costs and most metrics are positive: keep predictions so
        low = max(low, float(y.min()) / 2)
    return Predictor(objective, kind, scored[kind][0], scored[kind][1], {k: v[0] for k, v in scored.items()},
                     len(configs), regressor, space, (low, high))


def ask_and_predict(study: optuna.Study, space: WidthSpace, predictors: dict[str, Predictor], objectives: tuple[str, ...],
                    count: int) -> list[tuple[optuna.Trial, WidthConfig, list[float]]]:
    """Ask `count` trials of a predictor-only study and predict their objectives in one call per predictor (a call
    per trial would cost more than the search itself); the caller tells them."""
    names = param_names(space)
    trials = [study.ask() for _ in range(count)]
    configs = [from_params({n: t.suggest_categorical(n, list(c)) for n, c in names.items()}) for t in trials]
    values = np.column_stack([predictors[o].predict(configs) for o in objectives]).tolist()
    return list(zip(trials, configs, values))
