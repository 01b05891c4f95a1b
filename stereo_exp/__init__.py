"""stereo_exp: Hydra-composed training and evaluation of deep stereo-matching networks."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning, unless the environment says otherwise. This must be
# set before torch loads its OpenMP runtime, hence here, before any module of the package imports torch. Spinning
# pays off only on cores nobody else wants: with two processes of 2 threads on 2 cores (a sweep's jobs, a loader
# worker, another user) the default spin made 40 training steps take 440-490 s instead of 48 s, with the same
# numbers (docs/PERFORMANCE.md, "Sharing cores").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
