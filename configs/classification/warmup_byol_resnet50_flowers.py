# Head warm-up on flowers before BiSSL with a BYOL lower level
# (bissl_byol_resnet50_flowers.py): warmup_resnet50_flowers.py with the published lr
# and weight decay, d_lr / d_wd of
# BiSSL_byol_classification_flowers_arch-resnet50_config_id-7hs5o8v5.json
# (models/ of the authors' repository NIPS25-16372/NIPS25_16372_BiSSL; their warm-up takes
# d_lr / d_wd since d_linear_warmup_lr / _wd are unset there).
#   python tools/train.py configs/classification/warmup_byol_resnet50_flowers.py \
#       --cfg-options model.backbone_checkpoint=<BYOL pretext backbone>
_base_ = ["./warmup_resnet50_flowers.py"]
optim_wrapper = dict(optimizer=dict(lr=0.035, weight_decay=0.002))
