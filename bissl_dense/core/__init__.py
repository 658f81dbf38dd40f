"""The framework-agnostic bilevel core of BiSSL (SPEC §2–§3).

It imports nothing from mmengine, mmdet or mmseg: task adapters give it losses, parameters and the
lower↔upper backbone correspondence; training engines drive ``BilevelTrainer``.
"""

from bissl_dense.core.batch_stack import BatchStack, iterate_batches
from bissl_dense.core.bilevel import (
    BilevelStep,
    BilevelTrainer,
    BiSSLConfig,
    linear_warmup_cosine,
    phase_of_step,
)
from bissl_dense.core.correspondence import (
    BackboneCorrespondence,
    CorrespondenceError,
    prefix_correspondence,
)
from bissl_dense.core.hvp import make_hvp
from bissl_dense.core.implicit import ImplicitSolver, implicit_jacobian_product
from bissl_dense.core.krylov import SolveInfo, conjugate_gradient, minres

__all__ = [
    "BackboneCorrespondence",
    "BatchStack",
    "BiSSLConfig",
    "BilevelStep",
    "BilevelTrainer",
    "CorrespondenceError",
    "ImplicitSolver",
    "SolveInfo",
    "conjugate_gradient",
    "implicit_jacobian_product",
    "iterate_batches",
    "linear_warmup_cosine",
    "make_hvp",
    "minres",
    "phase_of_step",
    "prefix_correspondence",
]
