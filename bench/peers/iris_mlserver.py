"""iris_nearest as an MLServer custom runtime: bench/peers.py's ``mlserver`` peer.

    mlserver start mlserver/    # from bench/peers/, in the peer's own venv (ports from MLSERVER_* variables)

The V2 inference protocol: ``POST /v2/models/iris/infer`` with one input tensor per parameter (``features``
FP64 of shape [4]; ``metric`` and ``note`` BYTES; ``top_k`` INT64), answered with one output tensor per output
(``scores`` as a JSON string). Inputs the notebook does not know, or of the wrong type, are refused.
"""

from __future__ import annotations

import json
from typing import Any

from iris_model import METRICS, PARAMETERS, InvalidInput, predict
from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput


class BadInput(MLServerError):
    """A client error (HTTP 400) naming the input at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400)


def _value(tensor: RequestInput) -> Any:
    """One parameter's value from its tensor, checked against the parameters cell's type."""
    data = tensor.data.root if hasattr(tensor.data, "root") else tensor.data
    name = tensor.name
    if name == "features":
        if tensor.datatype not in ("FP64", "FP32", "INT64", "INT32") or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in data
        ):
            raise BadInput(f"features: expected numbers (FP64), got {tensor.datatype}")
        return [float(v) for v in data]
    if name == "top_k":
        if tensor.datatype not in ("INT64", "INT32") or len(data) != 1 or not isinstance(data[0], int):
            raise BadInput(f"top_k: expected one integer (INT64), got {tensor.datatype}")
        return data[0]
    if tensor.datatype != "BYTES" or len(data) != 1:
        raise BadInput(f"{name}: expected one string (BYTES), got {tensor.datatype}")
    text = StringCodec.decode_input(tensor)[0]
    if name == "metric" and text not in METRICS:
        raise BadInput(f"metric: must be one of {', '.join(METRICS)}, got {text!r}")
    return text


class IrisModel(MLModel):
    async def load(self) -> bool:
        """The notebook's setup cells ran at import (iris_model)."""
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        unknown = [t.name for t in payload.inputs if t.name not in PARAMETERS]
        if unknown:
            raise BadInput(f"unknown inputs: {', '.join(unknown)} (known: {', '.join(PARAMETERS)})")
        params = {t.name: _value(t) for t in payload.inputs}
        if "features" not in params:
            raise BadInput("features: required")
        try:
            answer = predict(**params)
        except InvalidInput as e:
            raise BadInput(str(e)) from None
        outputs = [
            StringCodec.encode_output("label", [answer["label"]]),
            ResponseOutput(name="distance", datatype="FP64", shape=[1], data=[answer["distance"]]),
            StringCodec.encode_output("scores", [json.dumps(answer["scores"])]),
        ]
        if answer["note"] is not None:
            outputs.append(StringCodec.encode_output("note", [answer["note"]]))
        return InferenceResponse(model_name=self.name, outputs=outputs)
