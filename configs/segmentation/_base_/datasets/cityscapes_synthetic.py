# Generated Cityscapes data (bissl_dense.datasets.synthetic), small images for CPU runs and tests:
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/cityscapes --kind cityscapes \
#       --n 16 --size 128
#   python -m bissl_dense.segmentation.data data/synthetic/cityscapes \
#       --out data/synthetic/cityscapes/splits
_base_ = ["./cityscapes.py"]
data_root = "data/synthetic/cityscapes"
split_dir = "splits"  # relative to data_root (mmseg joins ann_file onto data_root)
short_side = 64
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="Resize", scale=(100000, short_side), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(100000, short_side), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset=dict(data_root=data_root, ann_file=f"{split_dir}/train.txt",
                              pipeline=train_pipeline)),
)  # fmt: skip
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file=f"{split_dir}/val.txt", pipeline=test_pipeline),
)  # fmt: skip
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(data_root=data_root, pipeline=test_pipeline))  # fmt: skip
