# Pretext images for BiSSL's lower level: ImageNet-1k training images, labels unused (SPEC §4:
# 96 px, crop scale (0.5, 1); lower batch 1024 = 8 GPUs x 128).
pretext_dataloader = dict(
    batch_size=128,
    num_workers=8,
    pin_memory=True,
    dataset=dict(
        type="PretextImageFolder",
        data_root="data/imagenet/train",
        augmentation=dict(image_size=96, min_scale=0.5, crop_mode="scale"),
    ),
)
