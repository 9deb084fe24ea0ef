"""imgclf.data."""
