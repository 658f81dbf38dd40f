# Generated labelled images in the ImageFolder layout (bissl_dense.datasets.synthetic), small
# enough for CPU runs; only what differs from the shared benchmark base.
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/imagefolder --kind imagefolder \
#       --n 300 --size 48
_base_ = ["./benchmark.py"]
dataset_name = "imagefolder"
data_root = "data/synthetic/imagefolder"
num_classes = 5
image_size = 32
_data = dict(name=dataset_name, data_root=data_root, image_size=image_size, split_dir=None)
train_dataloader = dict(batch_size=32, num_workers=2, pin_memory=False, dataset=_data)
val_dataloader = dict(batch_size=64, num_workers=2, pin_memory=False, dataset=_data)
test_dataloader = dict(batch_size=64, num_workers=2, pin_memory=False, dataset=_data)
