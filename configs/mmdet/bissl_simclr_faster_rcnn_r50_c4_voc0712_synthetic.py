# The mmdet C4 BiSSL stage on the generated VOC data with small images (one or a few CPU
# processes): BatchNorm instead of SyncBN, few RoIs and proposals, a short schedule.
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/voc --kind voc --n 24 --size 96
_base_ = ["./bissl_simclr_faster_rcnn_r50_c4_voc0712.py"]
data_root = "data/synthetic/voc/VOCdevkit/"
_bn = dict(type="BN", requires_grad=True)
model = dict(task=dict(detector=dict(
    backbone=dict(norm_cfg=_bn),
    roi_head=dict(shared_head=dict(norm_cfg=_bn)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=16),
                   rcnn=dict(sampler=dict(num=16))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=16)),
)))  # fmt: skip
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(1000, 96), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(1000, 96), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs",
         meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]  # fmt: skip
_small = dict(filter_empty_gt=True, min_size=0, bbox_min_size=0)
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset=dict(datasets=[
        dict(type="VOCDataset", data_root=data_root,
             ann_file="VOC2007/ImageSets/Main/trainval.txt",
             data_prefix=dict(sub_data_root="VOC2007/"), filter_cfg=_small,
             pipeline=train_pipeline),
        dict(type="VOCDataset", data_root=data_root,
             ann_file="VOC2012/ImageSets/Main/trainval.txt",
             data_prefix=dict(sub_data_root="VOC2012/"), filter_cfg=_small,
             pipeline=train_pipeline),
    ])),
)  # fmt: skip
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))  # fmt: skip
test_dataloader = val_dataloader
pretext_dataloader = dict(
    batch_size=4,
    num_workers=0,
    pin_memory=False,
    dataset=dict(data_root="data/synthetic/unlabeled",
                 augmentation=dict(image_size=32, min_scale=0.5, crop_mode="scale")),
)  # fmt: skip
train_cfg = dict(bissl=dict(alternations=1, lower_steps=1, upper_steps=1, cg_iters=1,
                            residual_every=1), val_interval=1)  # fmt: skip
env_cfg = dict(dist_cfg=dict(backend="gloo"))
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
