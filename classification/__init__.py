"""BiSSL on the 12 classification data sets (SPEC §5), on the same core as every other task.

Importing this package registers the classification model, data set, metric, hooks and the
``ImageClassificationTask`` BiSSL task with mmengine and :mod:`bissl_dense.stage.tasks`.
"""

from classification import data, hooks, metrics, models, task  # noqa: F401  (registrations)
