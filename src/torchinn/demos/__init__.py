"""Runnable demonstrations (``torchinn demo``)."""
