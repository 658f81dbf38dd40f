# Shared by the 12 benchmark data sets (SPEC §4, §5): 96 px, batch 256, splits through
# classification.datasets.build_dataset; each data set's base sets its name and class count.
# `bissl data check --dataset NAME --root data/classification` verifies a layout first.
dataset_name = None
data_root = "data/classification"
num_classes = None
multilabel = False
image_size = 96
_data = dict(type="ClassificationDataset", name=dataset_name, data_root=data_root,
             image_size=image_size, split_dir="data/classification/splits")  # fmt: skip
train_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(_data, split="train", transform="train"),
)
val_dataloader = dict(
    batch_size=256,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(_data, split="val", transform="eval"),
)
test_dataloader = dict(val_dataloader, dataset=dict(_data, split="test", transform="eval"))
val_evaluator = dict(type="ClassificationMetric", mode="topk", topk=(1, 5))
test_evaluator = val_evaluator
