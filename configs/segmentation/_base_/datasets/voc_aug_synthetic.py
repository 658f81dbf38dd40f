# Generated VOC aug data (bissl_dense.datasets.synthetic), small images for CPU runs and tests:
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/voc --kind voc --n 24 --size 96
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
_voc = dict(type="PascalVOCDataset", data_root=data_root)
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset=dict(datasets=[
        dict(_voc, data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
             ann_file="ImageSets/Segmentation/train.txt", pipeline=train_pipeline),
        dict(_voc, data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
             ann_file="ImageSets/Segmentation/aug.txt", pipeline=train_pipeline),
    ])),
)  # fmt: skip
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))  # fmt: skip
test_dataloader = val_dataloader
