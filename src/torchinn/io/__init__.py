"""The ``.inn`` format: one safetensors file that holds an integral model (:mod:`.format`), checked
before anything is built from it (:mod:`.checks`, :mod:`.graph`, :mod:`.guards`, :mod:`.ops`,
:mod:`.spec`), and written so that a crash never loses the old contents (:mod:`.fileio`).
"""

from .format import FormatError, allow_ops, load, save

__all__ = ["FormatError", "allow_ops", "load", "save"]
