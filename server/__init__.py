"""accsmooth server: certified-robustness inference over ONNX model bundles.

The package never imports torch. `server.smoothing` (pure math) and `server.sampling`
(Monte-Carlo counting on an onnxruntime session) are shared with the offline exporter, so
the numbers the exporter evaluates are computed by the code the server runs.
"""
