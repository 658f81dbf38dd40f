"""The 12 classification datasets of the paper, read from their real on-disk layouts, with the
splits of SPEC §5.

    from classification.datasets import build_dataset
    train = build_dataset("pets", "/data", "train", transform=..., seed=0, split_dir="splits/")

``DATASETS[name]`` holds, per dataset, the expected layout, the split rule and how to get the
data; ``bissl data check --dataset NAME --root DIR`` reports what a build would find.
"""

from classification.datasets.base import (
    SPLITS,
    DatasetLayoutError,
    DatasetSplit,
    SplitFileError,
)
from classification.datasets.build import (
    CALTECH_PARTITION_SEED,
    CALTECH_TRAIN_PER_CLASS,
    DATASET_NAMES,
    DATASETS,
    DatasetSpec,
    build_dataset,
    build_splits,
    verify_files,
)

__all__ = [
    "CALTECH_PARTITION_SEED",
    "CALTECH_TRAIN_PER_CLASS",
    "DATASETS",
    "DATASET_NAMES",
    "SPLITS",
    "DatasetSplit",
    "DatasetLayoutError",
    "DatasetSpec",
    "SplitFileError",
    "build_dataset",
    "build_splits",
    "verify_files",
]
