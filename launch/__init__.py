"""Cluster side of stereo_exp: a single-node SLURM cluster for tests and demos, and a local MLflow server.

Not part of the installed package; run its tools from the repository root (``launch/slurm_cluster.sh start``,
``python -m launch.mlflow_server start``). docs/CLUSTER.md describes both.
"""
