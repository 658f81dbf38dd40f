#!/usr/bin/env python
"""Detection on detectron2 (SPEC §5): head warm-up, BiSSL and fine-tuning, as detectron2 users run
them. See ``bissl_dense/detection/train_net.py`` for the options, e.g.

    python tools/train_net.py --config-file configs/voc_bissl.yaml --num-gpus 8 \
        DATASETS.VOC_ROOT /data/VOCdevkit
"""

import sys

from bissl_dense.detection.train_net import main

if __name__ == "__main__":
    sys.exit(main())
