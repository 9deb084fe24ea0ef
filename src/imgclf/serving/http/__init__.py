"""imgclf.serving.http."""
