"""The ``.inn`` format: one safetensors file that holds an integral model (:mod:`.format`), checked
before anything is built from it (:mod:`.checks`, :mod:`.graph`, :mod:`.guards`, :mod:`.ops`,
:mod:`.spec`), and written so that a crash never loses the old contents (:mod:`.fileio`); and
Hugging Face folders for models whose layers have different sizes (:mod:`.pretrained`,
:mod:`.shapes`, :mod:`.padding`).
"""

from .format import FormatError, allow_ops, load, save
from .padding import PaddingError
from .pretrained import load_pretrained, save_pretrained

__all__ = ["FormatError", "PaddingError", "allow_ops", "load", "load_pretrained", "save", "save_pretrained"]
