"""Sweeps: a YAML grid of runs under one MLflow parent run, resumable, local / multi-GPU / Ray."""
