"""The model repository contract: what ``imgclf export --format triton`` writes and serving reads.

A Triton / KServe V2 model repository, as NVIDIA Triton and ``imgclf model-server`` both serve it::

    <repo>/<model>/config.pbtxt        Triton ModelConfig (text protobuf)         CONFIG_NAME
    <repo>/<model>/labels.txt          one label per line, in output order       LABELS_NAME
    <repo>/<model>/imgclf.json         labels, preprocessing and provenance       METADATA_NAME
    <repo>/<model>/<version>/model.onnx                                           MODEL_FILENAME

``config.pbtxt`` carries the labels and the preprocessing as string ``parameters``
(:data:`LABELS_PARAMETER`, :data:`PREPROCESSING_PARAMETER`, JSON-encoded by
:func:`config_parameters`, read back by :func:`read_parameters`), so any V2 client learns how to
talk to a model through the ``ModelConfig`` call. imgclf's model server adds a UINT8
:data:`PIXELS_INPUT` and a :data:`PROBABILITIES_OUTPUT` to every model.

This module sits below both the export stage (which writes repositories) and serving (the model
server and the gateway, which read them), so neither imports the other for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from imgclf.preprocessing import PreprocessConfig

CONFIG_NAME = "config.pbtxt"
LABELS_NAME = "labels.txt"
METADATA_NAME = "imgclf.json"
MODEL_FILENAME = "model.onnx"
#: ``parameters`` keys carrying what a client needs to talk to the model.
LABELS_PARAMETER = "imgclf.labels"
PREPROCESSING_PARAMETER = "imgclf.preprocessing"
#: Tensors imgclf's model server offers besides the ONNX model's own.
PIXELS_INPUT = "pixels"
PROBABILITIES_OUTPUT = "probabilities"
#: Bundle artifact formats a repository can serve (Triton's ``onnxruntime_onnx`` platform).
SERVABLE_FORMATS: tuple[str, ...] = ("onnx",)


def config_parameters(labels: Sequence[str], preprocess: PreprocessConfig) -> dict[str, str]:
    """The ``config.pbtxt`` parameters that describe a model: labels and preprocessing as JSON."""
    return {
        LABELS_PARAMETER: json.dumps(list(labels)),
        PREPROCESSING_PARAMETER: json.dumps(preprocess.to_dict()),
    }


def read_parameters(
    parameters: Mapping[str, str],
) -> tuple[list[str] | None, PreprocessConfig | None]:
    """Labels and preprocessing from a model config's string parameters (None where absent).

    Raises:
        ValueError: A parameter is present but is not what :func:`config_parameters` writes
            (``json.JSONDecodeError``, or ``ConfigError`` for unknown preprocessing keys).
    """
    labels = preprocess = None
    if LABELS_PARAMETER in parameters:
        labels = [str(label) for label in json.loads(parameters[LABELS_PARAMETER])]
    if PREPROCESSING_PARAMETER in parameters:
        preprocess = PreprocessConfig.from_dict(json.loads(parameters[PREPROCESSING_PARAMETER]))
    return labels, preprocess
