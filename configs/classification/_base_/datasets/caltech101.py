# caltech101 (SPEC §5 splits): only what differs from the shared benchmark base.
_base_ = ["./benchmark.py"]
dataset_name = "caltech101"
num_classes = 101
train_dataloader = dict(dataset=dict(name=dataset_name))
val_dataloader = dict(dataset=dict(name=dataset_name))
test_dataloader = dict(dataset=dict(name=dataset_name))
