"""Semantic segmentation (FCN-16 on mmseg) as a BiSSL downstream task (SPEC §5).

Importing this package registers the ``SegmentationTask`` task builder and the
``PerClassIoUMetric`` evaluator (mmseg's ``IoUMetric`` plus per-class IoU in the results).
"""

from bissl_dense.segmentation.model import backbone_mismatches, build_segmentor, fcn_d6_r50_d16
from bissl_dense.segmentation.task import segmentation_task

__all__ = ["backbone_mismatches", "build_segmentor", "fcn_d6_r50_d16", "segmentation_task"]
