# Generated unlabeled images (bissl_dense.datasets.synthetic), small enough for CPU runs:
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/unlabeled --kind unlabeled \
#       --n 512 --size 48
_base_ = ["./imagenet1k_pretext.py"]

data_root = "data/synthetic/unlabeled"
train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=True,
    pin_memory=False,
    dataset=dict(data_root=data_root, augmentation=dict(image_size=32)),
)
