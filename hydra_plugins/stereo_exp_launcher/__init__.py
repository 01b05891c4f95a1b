"""stereo_exp's Hydra launchers (Hydra finds plugins only in the ``hydra_plugins`` namespace): see launchers.py."""
