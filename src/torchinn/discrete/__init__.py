"""The discrete side: the user's own class back at the current sizes (:mod:`.rebuild`), its
Hugging Face config (:mod:`.hf_config`), modules the traced forward does not reach
(:mod:`.heads`), and how close a rebuilt network must come to the one it reproduces
(:mod:`.tolerance`).
"""

from .hf_config import ConfigMismatchError
from .rebuild import RebuildError

__all__ = ["ConfigMismatchError", "RebuildError"]
