"""imgclf.training."""
