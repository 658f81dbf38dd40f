"""Baselines that are not BiSSL (SPEC §6): parameter perturbations and head initialisations."""

from bissl_dense.baselines.noisytune import noisytune_, zero_init_head_

__all__ = ["noisytune_", "zero_init_head_"]
