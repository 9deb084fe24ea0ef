"""imgclf.serving.model_server."""
