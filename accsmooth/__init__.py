"""accsmooth core: what the server and the exporter share, so what is evaluated is what is served.

    accsmooth.smoothing  the randomized-smoothing rule: CERTIFY from counts, the surrogate's
                         certificate, calibration shifts, over-estimation (numpy + scipy)
    accsmooth.sampling   SAMPLEUNDERNOISE and Monte-Carlo CERTIFY on any predict callable
    accsmooth.runtime    onnxruntime sessions: providers, threads, `OnnxPredictor`
    accsmooth.bundle     the bundle format: `Manifest`, `FORMAT_VERSION`, `sha256_of`, checks
    accsmooth.images     image bytes -> float32 [3,H,W] model input, an `ImageError` per refusal

Never imports torch, FastAPI or anything of `server/` or `exporter/`.
"""
