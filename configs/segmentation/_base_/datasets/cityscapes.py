# Cityscapes fine, 19 classes (SPEC §5). The official validation set is the test set; the
# validation split is held out of the training images within each city (paper App. B.1) and
# written as mmseg ann_file lists by
#   python -m bissl_dense.segmentation.data data/cityscapes --out data/cityscapes/splits
# (CityscapesSplitDataset, bissl_dense.segmentation.data: mmseg's CityscapesDataset on those lists;
# a missing list fails naming this command).
# Paper recipe (App. B.7): short side resized, random flip 0.5, normalisation. The short side is
# not legible in our copy of the paper; 512 px is mmseg's Cityscapes training scale (2048x1024/2).
dataset_name = "cityscapes"
data_root = "data/cityscapes"
split_dir = "splits"  # relative to data_root (mmseg joins ann_file onto data_root)
num_classes = 19
short_side = 512
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
_train_images = dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train")
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(type="SeededMMDataset", dataset=dict(
        type="CityscapesSplitDataset", data_root=data_root, data_prefix=_train_images,
        ann_file=f"{split_dir}/train.txt", pipeline=train_pipeline)),
)  # fmt: skip
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(type="CityscapesSplitDataset", data_root=data_root, data_prefix=_train_images,
                 ann_file=f"{split_dir}/val.txt", pipeline=test_pipeline),
)  # fmt: skip
test_dataloader = dict(
    val_dataloader,
    dataset=dict(type="CityscapesDataset", data_root=data_root,
                 data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
                 pipeline=test_pipeline),
)  # fmt: skip
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
