"""imgclf.serving.gateway."""
