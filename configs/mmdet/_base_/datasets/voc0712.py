# VOC07+12 detection (SPEC §5): VOC2007 trainval + VOC2012 trainval for training, VOC2007 test
# for evaluation with mmdet's VOCMetric, 11-point AP at IoU 0.5 (AP50). Paper recipe (App. B.7,
# the BiSSL detection config): images resized so that the short side lies in 196-320 px, flip 0.5.
dataset_name = "voc0712"
data_root = "data/VOCdevkit/"
num_classes = 20
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomChoiceResize", scales=[(1333, s) for s in range(196, 321, 4)],
         keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]  # fmt: skip
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(1333, 320), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs",
         meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]  # fmt: skip
_filter = dict(filter_empty_gt=True, min_size=32, bbox_min_size=32)
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(type="SeededMMDataset", dataset=dict(
        type="ConcatDataset", ignore_keys=["dataset_type"], datasets=[
            dict(type="VOCDataset", data_root=data_root,
                 ann_file="VOC2007/ImageSets/Main/trainval.txt",
                 data_prefix=dict(sub_data_root="VOC2007/"), filter_cfg=_filter,
                 pipeline=train_pipeline),
            dict(type="VOCDataset", data_root=data_root,
                 ann_file="VOC2012/ImageSets/Main/trainval.txt",
                 data_prefix=dict(sub_data_root="VOC2012/"), filter_cfg=_filter,
                 pipeline=train_pipeline),
        ])),
)  # fmt: skip
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="pseudo_collate"),
    dataset=dict(type="VOCDataset", data_root=data_root,
                 ann_file="VOC2007/ImageSets/Main/test.txt",
                 data_prefix=dict(sub_data_root="VOC2007/"), test_mode=True,
                 pipeline=test_pipeline),
)  # fmt: skip
test_dataloader = val_dataloader
val_evaluator = dict(type="VOCMetric", metric="mAP", eval_mode="11points", iou_thrs=[0.5])
test_evaluator = val_evaluator
