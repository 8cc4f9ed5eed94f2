"""
Choose the depth by cross-validation
====================================

The solvers are scikit-learn estimators: the number of iterations of ``ClassicalCB`` is a
hyperparameter like any other, chosen here by ``GridSearchCV`` with the source-imaging
scorers on simulated data (the scorers need the true sources).
"""

from sklearn.model_selection import GridSearchCV

import unfolded_sbl as us

fwd = us.load_forward()
train = us.simulate(fwd, 12, random_state=1)
search = GridSearchCV(us.ClassicalCB(forward=fwd), {"n_iter": [5, 10, 25]}, cv=2,
                      scoring={"rmse": us.rmse_scorer, "f1": us.f1_scorer}, refit="rmse")
search.fit(train.sensors, train.sources)
print("best:", search.best_params_)
for n_iter, rmse, f1 in zip(search.cv_results_["param_n_iter"],
                            search.cv_results_["mean_test_rmse"],
                            search.cv_results_["mean_test_f1"]):
    print(f"n_iter {n_iter:3d}: 1 - rMSE {rmse:.3f}, F1 {f1:.3f}")
