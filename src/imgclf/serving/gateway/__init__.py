"""Gateway mode: the REST service forwards preprocessed tensors to a V2 model server.

:class:`imgclf.serving.gateway.client.RemoteBackend` implements
:class:`imgclf.serving.backend.InferenceBackend` over V2 gRPC; ``imgclf serve --model-server
grpc://HOST:PORT`` uses it. It is imported lazily (it needs the ``grpc`` extra).
"""
