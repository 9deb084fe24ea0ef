"""imgclf.serving."""
