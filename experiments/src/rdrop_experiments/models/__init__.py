"""Models shared by experiment families (small Transformers trained from scratch)."""
