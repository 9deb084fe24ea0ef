"""imgclf.evaluation."""
