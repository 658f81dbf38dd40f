# ImageNet-1k training images, labels unused (any folder of images works, searched recursively).
# Override the location with --cfg-options train_dataloader.dataset.data_root=/path/to/train
data_root = "data/imagenet/train"
train_dataloader = dict(
    batch_size=128,  # per GPU: 8 GPUs x 128 = 1024, the published batch (SPEC §4)
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    # SeededSampler: per-draw augmentation seeds, so resume replays the same crops.
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(
        type="PretextImageFolder",
        data_root=data_root,
        # SPEC §4: 96 px, RandomResizedCrop scale (0.5, 1); "reference_aspect_ratio" reproduces
        # the authors' code, which passes the minimum to the aspect-ratio range instead.
        augmentation=dict(image_size=96, min_scale=0.5, crop_mode="scale"),
    ),
)
