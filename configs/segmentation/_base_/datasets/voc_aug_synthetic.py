# Generated VOC aug data (bissl_dense.datasets.synthetic), small images for CPU runs and tests:
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/voc --kind voc --n 24 --size 96
#   python -m bissl_dense.segmentation.data data/synthetic/voc/VOCdevkit/VOC2012 \
#       --out data/synthetic/voc/VOCdevkit/VOC2012/splits
_base_ = ["./voc_aug.py"]
data_root = "data/synthetic/voc/VOCdevkit/VOC2012"
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
    dataset=dict(dataset=dict(data_root=data_root, pipeline=train_pipeline)),
)
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))  # fmt: skip
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(data_root=data_root, pipeline=test_pipeline))  # fmt: skip
