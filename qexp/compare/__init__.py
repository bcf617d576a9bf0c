"""`qexp compare`: the reference study's tables and plots, regenerated from the MLflow store alone."""
