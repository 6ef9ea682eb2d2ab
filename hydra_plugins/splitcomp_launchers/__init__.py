"""Hydra launchers of splitcomp (Hydra finds launchers only in the ``hydra_plugins`` namespace)."""
