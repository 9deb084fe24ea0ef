#!/bin/sh
# Start the Lambda handler named by "$1".
# - On Lambda (AWS_LAMBDA_RUNTIME_API is set): through the runtime interface client (awslambdaric).
# - Locally, on an AWS base image: under its Runtime Interface Emulator (RIE), which serves
#   POST /2015-03-31/functions/function/invocations on port 8080.
# - Locally, on any other base image: imgclf's own stand-in for that invoke URL, same port and path,
#   so `docker run -p 127.0.0.1:9000:8080 imgclf-lambda` works the same way on every base image.
set -eu
if [ -n "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
    exec /opt/venv/bin/python -m awslambdaric "$@"
fi
if [ -x /usr/local/bin/aws-lambda-rie ]; then
    exec /usr/local/bin/aws-lambda-rie /opt/venv/bin/python -m awslambdaric "$@"
fi
exec /opt/venv/bin/python -m imgclf.serving.aws_lambda.local_invoke --host 0.0.0.0 --port 8080 "$@"
