#!/bin/sh
# Start the Lambda handler named by "$1" through the runtime interface client (awslambdaric).
# On Lambda, AWS_LAMBDA_RUNTIME_API names the Runtime API. Without it, run under the Runtime
# Interface Emulator when the image has one (AWS base images do), for local `docker run`.
set -eu
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ] && [ -x /usr/local/bin/aws-lambda-rie ]; then
    exec /usr/local/bin/aws-lambda-rie /opt/venv/bin/python -m awslambdaric "$@"
fi
exec /opt/venv/bin/python -m awslambdaric "$@"
