"""Faster R-CNN R50-C4 detection on detectron2 for BiSSL (SPEC §5, issue 10).

* :mod:`~bissl_dense.detection.correspondence`: torchvision ResNet-50 ↔ detectron2 C4 names,
  weight conversion both ways (no detectron2 import);
* :mod:`~bissl_dense.detection.weights`: detectron2's ``.pkl`` format, read without unpickling
  arbitrary objects; loading a backbone + res5 into the detector with every key checked;
* :mod:`~bissl_dense.detection.config`: BiSSL's detectron2 config keys (paper defaults);
* :mod:`~bissl_dense.detection.model`, :mod:`~bissl_dense.detection.data`,
  :mod:`~bissl_dense.detection.task`, :mod:`~bissl_dense.detection.trainer`,
  :mod:`~bissl_dense.detection.evaluation`, :mod:`~bissl_dense.detection.train_net`: the detector,
  VOC07+12, the upper loss, the BiSSL and fine-tuning trainers, AP50 and ``tools/train_net.py``.

Only the first two import without detectron2; the rest need it (``tools/install_env.sh`` builds
it at the commit pinned in ``requirements/detectron2.txt``).
"""
