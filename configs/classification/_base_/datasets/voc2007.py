# voc2007 (SPEC §5 splits): only what differs from the shared benchmark base.
_base_ = ["./benchmark.py"]
dataset_name = "voc2007"
num_classes = 20
train_dataloader = dict(dataset=dict(name=dataset_name))
val_dataloader = dict(dataset=dict(name=dataset_name))
test_dataloader = dict(dataset=dict(name=dataset_name))
multilabel = True  # multi-label, 11-point mAP (SPEC §4)
val_evaluator = dict(type="ClassificationMetric", mode="voc07_map", _delete_=True)
test_evaluator = val_evaluator
