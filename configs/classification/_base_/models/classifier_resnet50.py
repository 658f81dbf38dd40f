# The downstream classifier (SPEC §4): ResNet-50 with torchvision names + one linear layer.
# num_classes and multilabel come from the data set base (see the stage configs).
model = dict(
    type="ImageClassifier",
    num_classes=None,
    backbone=dict(arch="resnet50", channels_last=False),  # True: NHWC convolutions
    backbone_checkpoint=None,  # pretext or BiSSL backbone file: --cfg-options model.backbone_checkpoint=...
    head_checkpoint=None,
    freeze_backbone=False,
    zero_init_head=False,
    multilabel=False,
)
