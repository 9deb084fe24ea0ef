"""imgclf.inference."""
