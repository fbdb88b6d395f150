"""Cluster jobs: run train or sweep on a running Ray cluster and bring its results back."""
