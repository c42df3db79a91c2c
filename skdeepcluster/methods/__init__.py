"""One module per estimator; import them from :mod:`skdeepcluster`."""
