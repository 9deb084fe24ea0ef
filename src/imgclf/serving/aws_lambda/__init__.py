"""imgclf.serving.aws_lambda."""
