"""Request and response bodies of the REST API, as pydantic models (they document /docs too)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Upper bound of the ``max_batch_images`` setting (and so of any list of images in a request).
MAX_BATCH_IMAGES = 1024


class ImageInput(BaseModel):
    """One image, given either as a URL to fetch or as base64-encoded bytes."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="http(s) URL of the image", max_length=4096)
    image: str | None = Field(None, description="Base64-encoded image bytes (data: URLs too)")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        if (self.url is None) == (self.image is None):
            raise ValueError("give exactly one of 'url' or 'image'")
        return self


class BatchRequest(BaseModel):
    """Several images classified in one request."""

    model_config = ConfigDict(extra="forbid")

    # The bound is the largest max_batch_images allows; the setting itself is checked before
    # validation. A bound here makes pydantic refuse a huge list before validating its items.
    images: list[ImageInput] = Field(
        min_length=1, max_length=MAX_BATCH_IMAGES, description="Images, each a url or base64"
    )


class ClassProbability(BaseModel):
    """One class and its probability."""

    model_config = ConfigDict(populate_by_name=True)

    label: str = Field(alias="class")
    prob: float


class ModelInfo(BaseModel):
    """Which model answered."""

    name: str
    version: str


class ModelDescription(ModelInfo):
    """The served model and its classes."""

    labels: list[str]
    input_size: int


class PredictResponse(BaseModel):
    """The most likely class of one image and the ``top_k`` most likely classes."""

    model_config = ConfigDict(populate_by_name=True)

    label: str = Field(alias="class", description="Most likely class")
    probability: float
    top_k: list[ClassProbability]
    model: ModelInfo


class BatchPrediction(BaseModel):
    """A prediction inside a batch response (model info is given once, at the top)."""

    model_config = ConfigDict(populate_by_name=True)

    label: str = Field(alias="class")
    probability: float
    top_k: list[ClassProbability]


class BatchResponse(BaseModel):
    """Predictions in the order the images were given."""

    predictions: list[BatchPrediction]
    model: ModelInfo


class ErrorResponse(BaseModel):
    """Every error answers with this body."""

    detail: str


class HealthResponse(BaseModel):
    """Liveness or readiness."""

    status: str


#: OpenAPI description of the bodies ``POST /predict`` accepts (parsed by hand in the route).
PREDICT_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/json": {"schema": ImageInput.model_json_schema()},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

#: OpenAPI description of the bodies ``POST /predict/batch`` accepts.
BATCH_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
                "required": ["files"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "images": {
                        "type": "array",
                        "minItems": 1,
                        "items": ImageInput.model_json_schema(),
                    }
                },
                "required": ["images"],
                "additionalProperties": False,
            }
        },
    },
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Bad input: not decodable, bad base64, URL refused or unreachable",
        401: "Missing or wrong API key",
        408: "Request body not received in time (a stalled upload)",
        413: "Body or image too large",
        415: "Not a supported image type (checked by content)",
        422: "Malformed request",
        429: "Rate limit exceeded (see Retry-After)",
        503: "Overloaded or not ready (see Retry-After)",
    }.items()
}
