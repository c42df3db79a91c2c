"""
=========================================================
Cross-validation and grid search with clustering scorers
=========================================================

Clusterers plug into scikit-learn's model selection. With labels, the scorer
``clustering_accuracy`` matches clusters to classes on each held-out fold. Without labels,
``GridSearchCV`` uses the estimator's own ``score``, a label-free criterion (higher is better).
"""

# %%
from sklearn.model_selection import GridSearchCV, cross_validate

from skdeepcluster import TEMIClusterer, clustering_accuracy, load_digits_images

images, y = load_digits_images()
X = images.reshape(len(images), -1) / 255.0
small = dict(n_clusters=10, n_heads=2, batch_size=128, lr=1e-3, max_epochs=33,
             random_state=0)

# %%
# Train on two folds, score the third
# -----------------------------------
scores = cross_validate(
    TEMIClusterer(**small), X, y, cv=3,
    scoring={"accuracy": clustering_accuracy, "nmi": "normalized_mutual_info_score"},
)
print("held-out ACC", scores["test_accuracy"].round(3))
print("held-out NMI", scores["test_nmi"].round(3))

# %%
# Choose beta without labels
# --------------------------
# No ``y`` and no ``scoring``: each candidate is judged by ``TEMIClusterer.score``, the mutual
# information between samples and clusters on the held-out fold. It is high when predictions are
# confident and the clusters evenly used, so a clustering that collapsed into a few clusters
# (which a short training like this one can produce, with a ``ConvergenceWarning``) scores low
# and is not chosen.
search = GridSearchCV(TEMIClusterer(**small), {"beta": [0.6, 1.0]}, cv=2).fit(X)
print("label-free scores", search.cv_results_["mean_test_score"].round(3))
print("chosen", search.best_params_)
