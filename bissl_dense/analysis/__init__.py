"""Analyses of trained backbones (SPEC §7): parameter/feature alignment and t-SNE embeddings."""

from bissl_dense.analysis.alignment import (
    extract_features,
    feature_cosine_similarity,
    parameter_cosine_similarity,
    reestimate_batchnorm,
    tsne_embedding,
)

__all__ = [
    "extract_features",
    "feature_cosine_similarity",
    "parameter_cosine_similarity",
    "reestimate_batchnorm",
    "tsne_embedding",
]
