"""Training integral models: random sizes (:mod:`.sizes`), grid tuning, fine-tuning and the sandwich rule (:mod:`.train`), the
budgeted loop they share (:mod:`.loop`) and the distillation losses (:mod:`.distill`).
"""

from .distill import Distillation
from .sizes import RandomSizes
from .train import TuneConfig, finetune, make_grid_trainable, sandwich_backward, tune_grid

__all__ = ["Distillation", "RandomSizes", "TuneConfig", "finetune", "make_grid_trainable", "sandwich_backward", "tune_grid"]
