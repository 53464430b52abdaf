"""Data loaders: packaged real data by default, full-size formats from a local path."""
