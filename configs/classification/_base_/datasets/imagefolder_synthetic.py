# Generated labelled images in the ImageFolder layout (bissl_dense.datasets.synthetic):
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/imagefolder --kind imagefolder \
#       --n 300 --size 48
dataset_name = "imagefolder"
data_root = "data/synthetic/imagefolder"
num_classes = 5
multilabel = False
image_size = 32
_data = dict(type="ClassificationDataset", name=dataset_name, data_root=data_root,
             image_size=image_size, split_dir=None)  # fmt: skip
train_dataloader = dict(
    batch_size=32,
    num_workers=2,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(_data, split="train", transform="train"),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(_data, split="val", transform="eval"),
)
test_dataloader = dict(val_dataloader, dataset=dict(_data, split="test", transform="eval"))
val_evaluator = dict(type="ClassificationMetric", mode="topk", topk=(1, 5))
test_evaluator = val_evaluator
