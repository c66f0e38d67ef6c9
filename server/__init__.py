"""accsmooth server: certified-robustness inference over ONNX model bundles.

The package never imports torch. `accsmooth.smoothing` (pure math) and `accsmooth.sampling`
(Monte-Carlo counting on an onnxruntime session) are shared with the offline exporter, so
the numbers the exporter evaluates are computed by the code the server runs.
"""
