"""stereo_exp: Hydra-composed training and evaluation of deep stereo-matching networks."""

__version__ = "0.1.0"
