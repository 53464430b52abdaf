"""Experiment families. Every module here is imported by :func:`rdrop_experiments.discover` and
registers its experiments with :func:`rdrop_experiments.register`; add a file, not a list entry."""
