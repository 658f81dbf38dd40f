# Pretext images for BiSSL's lower level: generated unlabeled images (bissl_dense.datasets.synthetic)
#   python -m bissl_dense.datasets.synthetic --out data/synthetic/unlabeled --kind unlabeled --n 512 --size 48
pretext_dataloader = dict(
    batch_size=32,
    num_workers=2,
    dataset=dict(
        type="PretextImageFolder",
        data_root="data/synthetic/unlabeled",
        augmentation=dict(image_size=32, min_scale=0.5, crop_mode="scale"),
    ),
)
