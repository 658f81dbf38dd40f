"""mmdet's Faster R-CNN R50-C4 as a BiSSL downstream task (SPEC §5, the second detection backend).

Importing this package registers the ``DetectionC4Task`` task builder.
"""

from bissl_dense.mmdet_task.task import C4_PREFIXES, detection_c4_task

__all__ = ["C4_PREFIXES", "detection_c4_task"]
