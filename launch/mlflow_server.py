"""``python -m launch.mlflow_server`` from a checkout's root: the same as ``python -m stereo_exp.tracking.server``
(installed with the package, so it works from any directory), where the MLflow server helper lives."""

import sys

from stereo_exp.tracking.server import DEFAULT_HOST, MlflowServer, free_port, main

__all__ = ["DEFAULT_HOST", "MlflowServer", "free_port", "main"]

if __name__ == "__main__":
    sys.exit(main())
