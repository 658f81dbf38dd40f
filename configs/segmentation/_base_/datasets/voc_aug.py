# PASCAL VOC aug (SPEC §5: "VOC07+12"), as mmseg's voc_aug converter leaves it: VOC2012 seg train
# + SBD's extra masks (ImageSets/Segmentation/aug.txt, SegmentationClassAug/), 21 classes.
# Validation is held out of those training images (SPEC §5; paper App. B.1: ~20 %, here from
# each of the two lists), written once as mmseg ann_file lists by
#   python -m bissl_dense.segmentation.data data/VOCdevkit/VOC2012 \
#       --out data/VOCdevkit/VOC2012/splits
# (splits/{train,train_aug,val,val_aug}.txt; a missing list fails naming this command). VOC2012
# seg val (ImageSets/Segmentation/val.txt) is the test set only.
# Paper recipe (App. B.7): short side resized, random horizontal flip 0.5, normalisation (in the
# model's data preprocessor).
# The short side is not legible in our copy of the paper; 512 px is mmseg's VOC test scale.
dataset_name = "voc_aug"
data_root = "data/VOCdevkit/VOC2012"
split_dir = "splits"  # relative to data_root (mmseg joins ann_file onto data_root)
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
# VOCAugDataset (bissl_dense.segmentation.data): ann_file with VOC's masks (seg_map_path),
# aug_ann_file with SBD's (aug_seg_map_path), in one dataset
_prefix = dict(img_path="JPEGImages", seg_map_path="SegmentationClass",
               aug_seg_map_path="SegmentationClassAug")  # fmt: skip
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(type="SeededMMDataset", dataset=dict(
        type="VOCAugDataset", data_root=data_root, data_prefix=_prefix,
        ann_file=f"{split_dir}/train.txt", aug_ann_file=f"{split_dir}/train_aug.txt",
        pipeline=train_pipeline)),
)  # fmt: skip
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(type="VOCAugDataset", data_root=data_root, data_prefix=_prefix,
                 ann_file=f"{split_dir}/val.txt", aug_ann_file=f"{split_dir}/val_aug.txt",
                 pipeline=test_pipeline),
)  # fmt: skip
test_dataloader = dict(
    val_dataloader,
    dataset=dict(type="PascalVOCDataset", data_root=data_root,
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                 ann_file="ImageSets/Segmentation/val.txt", pipeline=test_pipeline),
)  # fmt: skip
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
