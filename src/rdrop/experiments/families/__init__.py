"""Experiment families. Every module here is imported by :func:`rdrop.experiments.discover` and
registers its experiments with :func:`rdrop.experiments.register`; add a file, not a list entry."""
