# PASCAL VOC aug (SPEC §5: "VOC07+12"), as mmseg's voc_aug converter leaves it: VOC2012 seg train
# + SBD's extra masks (ImageSets/Segmentation/aug.txt, SegmentationClassAug/), 21 classes;
# VOC2012 seg val is the evaluation set. Paper recipe (App. B.7): short side resized, random
# horizontal flip 0.5, normalisation (in the model's data preprocessor).
# The short side is not legible in our copy of the paper; 512 px is mmseg's VOC test scale.
dataset_name = "voc_aug"
data_root = "data/VOCdevkit/VOC2012"
num_classes = 21
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
    dict(type="LoadAnnotations"),  # after the resize: evaluated at the original size
    dict(type="PackSegInputs"),
]
_voc = dict(type="PascalVOCDataset", data_root=data_root)
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(type="SeededMMDataset", dataset=dict(type="ConcatDataset", datasets=[
        dict(_voc, data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
             ann_file="ImageSets/Segmentation/train.txt", pipeline=train_pipeline),
        dict(_voc, data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
             ann_file="ImageSets/Segmentation/aug.txt", pipeline=train_pipeline),
    ])),
)  # fmt: skip
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(_voc, data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                 ann_file="ImageSets/Segmentation/val.txt", pipeline=test_pipeline),
)  # fmt: skip
test_dataloader = val_dataloader
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
