# Head warm-up on dtd before BiSSL with a BYOL lower level
# (bissl_byol_resnet50_dtd.py): warmup_resnet50_dtd.py with the published lr
# and weight decay, d_lr / d_wd of
# BiSSL_byol_classification_dtd_arch-resnet50_config_id-shohwrin.json
# (models/ of the authors' repository NIPS25-16372/NIPS25_16372_BiSSL; their warm-up takes
# d_lr / d_wd since d_linear_warmup_lr / _wd are unset there).
#   python tools/train.py configs/classification/warmup_byol_resnet50_dtd.py \
#       --cfg-options model.backbone_checkpoint=<BYOL pretext backbone>
_base_ = ["./warmup_resnet50_dtd.py"]
optim_wrapper = dict(optimizer=dict(lr=0.015, weight_decay=0.0001))
