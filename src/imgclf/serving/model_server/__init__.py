"""An Open Inference Protocol (KServe V2) model server for Triton-style model repositories.

``imgclf model-server --repository DIR`` serves every model of a repository written by
``imgclf export BUNDLE --format triton --out DIR`` (see :mod:`imgclf.export.triton`) over V2 gRPC
(:mod:`.grpc_service`, the ``tritonclient`` stubs) and V2 REST (:mod:`.rest`), so Triton clients
work unchanged and the same repository also runs on NVIDIA Triton or KServe.

Modules, in the order a request meets them::

    repository.py     config.pbtxt parsing (Triton's ModelConfig), version policies, hot reload
    model.py          one model version: inputs (FP32 ``input`` or UINT8 ``pixels``), outputs
                      (``logits``, ``probabilities``, classification) mapped onto the inference
                      core (its ONNX Runtime layer, batcher and softmax)
    grpc_service.py   inference.GRPCInferenceService and gRPC status codes
    rest.py           /v2 REST routes with the binary tensor extension
    tfserving_grpc.py TF Serving's PredictionService and ModelService (a port of its own)
    tfserving_rest.py TF Serving's /v1 REST routes, on the REST port
    server.py         runs the transports over one repository
    cli.py            ``imgclf model-server``
    proto/            the V2 protocol definitions the stubs were compiled from; tfserving/ holds
                      TF Serving's and the TensorFlow ones they import, compiled into
                      tfserving.binpb (``tools/tfserving_protos.py``)

What a client needs besides tensors travels in standard places: labels through the
classification extension (``label_filename`` in ``config.pbtxt``) and, with the preprocessing,
as ``imgclf.labels`` / ``imgclf.preprocessing`` config parameters returned by ``ModelConfig``.
Nothing here imports torch.
"""
