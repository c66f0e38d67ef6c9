"""The Open Inference Protocol v2 (KServe's and Triton's HTTP API), so their clients work as is.

    GET  /v2                          server metadata
    GET  /v2/models/{name}            model metadata: the `image` input, the five outputs
    GET  /v2/models/{name}/ready      200 {"name", "ready": true}; 503 while not ready
    POST /v2/models/{name}/infer      certify the images of the BYTES tensor `image`

The input `image` is a BYTES tensor of shape [N], one encoded image (PNG, JPEG, WebP, BMP)
per element, N <= ACCSMOOTH_MAX_BATCH; in JSON each element is the base64 text of the file,
with the binary-data extension the raw bytes (each element prefixed by its length as a
4-byte little-endian integer, the protocol's BYTES layout). Outputs, each of shape [N]:
`predicted_class` (INT64, -1 when abstained), `certified_radius`, `p_a`, `p_a_lower` (FP64),
`abstained` (BOOL); as JSON data, or binary when the request asks for it
(`binary_data_output`, or `binary_data` on a requested output: tritonclient's default).
Request parameters: `calibrated` (bool, default true) and `mode` (`surrogate` or `hybrid`,
with the API key rules of /certify). Errors are the protocol's `{"error": "<code>: <detail>"}`
with the status codes of the rest of the API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.fast import surrogate
from server.http.deps import check_key_for_hybrid, require_key_for_certify
from server.http.errors import (
    AccsmoothError,
    InvalidParameter,
    MissingImage,
    ModelNotReady,
    TooManyImages,
    status_of,
)
from server.sampled import hybrid

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

HEADER_LENGTH = "inference-header-content-length"
# output name (the answer's field) -> (protocol datatype, numpy dtype)
OUTPUTS = {
    "predicted_class": ("INT64", np.int64),
    "certified_radius": ("FP64", np.float64),
    "p_a": ("FP64", np.float64),
    "p_a_lower": ("FP64", np.float64),
    "abstained": ("BOOL", np.bool_),
}


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _error(exc: AccsmoothError) -> Response:
    return _json({"error": f"{exc.code}: {exc.detail}"}, status_of(exc), exc.headers)


@router.get("")
async def server_metadata(request: Request):
    """Server metadata (name, version, protocol extensions)."""
    return _json(
        {"name": "accsmooth", "version": request.app.version, "extensions": ["binary_tensor_data"]}
    )


@router.get("/models/{name}")
async def model_metadata(name: str, request: Request):
    """The model's versions, its input and its outputs."""
    try:
        model = request.app.state.registry.get(name)
    except AccsmoothError as exc:
        return _error(exc)
    outputs = [{"name": k, "datatype": t, "shape": [-1]} for k, (t, _) in OUTPUTS.items()]
    return _json(
        {
            "name": model.name,
            "versions": [model.manifest.version],
            "platform": "accsmooth_surrogate_certificate",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
        }
    )


@router.get("/models/{name}/ready")
async def model_ready(name: str, request: Request):
    """200 when the model serves, else the registry's 404 or 503."""
    try:
        request.app.state.registry.get(name)
        if request.app.state.drain.draining:
            raise ModelNotReady("the server is shutting down")
    except AccsmoothError as exc:
        return _error(exc)
    return _json({"name": name, "ready": True})


def split_bytes(blob: bytes) -> list[bytes]:
    """The elements of a BYTES tensor in the binary layout (4-byte LE length, then the bytes)."""
    out, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise InvalidParameter("binary BYTES tensor 'image': truncated element length")
        size = int.from_bytes(blob[i : i + 4], "little")
        if i + 4 + size > len(blob):
            raise InvalidParameter("binary BYTES tensor 'image': an element overruns the data")
        out.append(blob[i + 4 : i + 4 + size])
        i += 4 + size
    return out


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, list[bytes]]:
    """(the JSON inference request, the images of its `image` input)."""
    try:
        size = int(header_length) if header_length is not None else len(body)
        if not 0 <= size <= len(body):
            raise ValueError(size)
        request = orjson.loads(body[:size])
        inputs = request["inputs"]
        if not isinstance(request, dict) or not isinstance(inputs, list):
            raise TypeError
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidParameter(
            "the body is not an inference request: a JSON object with 'inputs'"
        ) from exc
    binary, offset = body[size:], 0
    images = None
    for tensor in inputs:
        params = tensor.get("parameters") or {}
        length = params.get("binary_data_size")
        if length is not None:
            chunk, offset = binary[offset : offset + int(length)], offset + int(length)
        if tensor.get("name") != "image":
            continue
        if tensor.get("datatype") != "BYTES":
            raise InvalidParameter("input 'image' must have datatype BYTES (the encoded files)")
        if length is not None:
            images = split_bytes(chunk)
        else:
            try:
                images = [base64.b64decode(s, validate=True) for s in tensor.get("data", [])]
            except (binascii.Error, TypeError, ValueError) as exc:
                raise InvalidParameter(
                    "input 'image' as JSON: each element is the base64 text of an image file"
                ) from exc
    if not images:
        raise MissingImage("no input 'image' (BYTES, one encoded image per element)")
    return request, images


def _bool_parameter(params: dict, name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise InvalidParameter(f"parameter {name!r} must be a boolean")
    return value


def encode_outputs(request: dict, answers: list[dict]) -> tuple[list[dict], bytes]:
    """The response's output tensors, and the binary section for those sent as binary."""
    wanted = request.get("outputs") or [{"name": name} for name in OUTPUTS]
    binary_default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    tensors, blobs = [], []
    for spec in wanted:
        name = spec.get("name")
        if name not in OUTPUTS:
            raise InvalidParameter(f"unknown output {name!r}; outputs: {', '.join(OUTPUTS)}")
        datatype, dtype = OUTPUTS[name]
        if name == "predicted_class":
            values = [-1 if a["abstained"] else a["predicted_class"] for a in answers]
        else:
            values = [a[name] for a in answers]
        tensor = {"name": name, "datatype": datatype, "shape": [len(values)]}
        if (spec.get("parameters") or {}).get("binary_data", binary_default):
            raw = np.asarray(values, dtype=dtype).tobytes()  # little-endian on every target
            tensor["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            tensor["data"] = values
        tensors.append(tensor)
    return tensors, b"".join(blobs)


async def _certify(request: Request, model, images: list[bytes], params: dict) -> list[dict]:
    state = request.app.state
    calibrated = _bool_parameter(params, "calibrated", True)
    mode = params.get("mode", "surrogate")
    if mode not in ("surrogate", "hybrid"):
        raise InvalidParameter(f"parameter 'mode' is {mode!r}: 'surrogate' or 'hybrid'")
    if mode == "hybrid":
        check_key_for_hybrid(request, state.settings)

    async def one(index: int, data: bytes) -> dict:
        try:
            if mode == "hybrid":
                answer = await hybrid.certify_hybrid(
                    model,
                    state.hybrid,
                    state.decoder,
                    data,
                    state.settings,
                    calibrated=calibrated,
                    resize=False,
                    shadow=state.shadow,
                )
                return answer.model_dump()
            return await surrogate.surrogate_answer(
                model,
                data,
                calibrated=calibrated,
                resize=False,
                decoder=state.decoder,
                endpoint="/v2/models/{name}/infer",
                shadow=state.shadow,
            )
        except AccsmoothError as exc:
            if len(images) > 1:
                exc.detail = f"image {index + 1} of {len(images)}: {exc.detail}"
            raise

    return list(await asyncio.gather(*(one(i, data) for i, data in enumerate(images))))


@router.post("/models/{name}/infer")
async def infer(name: str, request: Request):
    """Certify each element of the BYTES input `image` (see the module's docstring)."""
    settings = request.app.state.settings
    try:
        await require_key_for_certify(request, settings)
        model = request.app.state.registry.get(name)
        body = await request.body()
        inference, images = parse_request(body, request.headers.get(HEADER_LENGTH))
        if len(images) > settings.max_batch:
            raise TooManyImages(
                f"{len(images)} images sent, at most {settings.max_batch} per request"
                " (ACCSMOOTH_MAX_BATCH)"
            )
        answers = await _certify(request, model, images, inference.get("parameters") or {})
        outputs, binary = encode_outputs(inference, answers)
    except AccsmoothError as exc:
        return _error(exc)
    response = {
        "model_name": model.name,
        "model_version": model.manifest.version,
        "outputs": outputs,
    }
    if "id" in inference:
        response["id"] = inference["id"]
    head = orjson.dumps(response)
    if not binary:
        return Response(head, media_type="application/json")
    return Response(
        head + binary,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )
