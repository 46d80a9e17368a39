"""The ``torchinn`` command line (:mod:`.main`): argument types (:mod:`.args`), the commands
(:mod:`.commands`), what they print and write (:mod:`.output`), how they read models and
images (:mod:`.loading`) and a language model's calibration text (:mod:`.tokens`)."""

__all__ = []  # the entry point is torchinn.cli.main.main
