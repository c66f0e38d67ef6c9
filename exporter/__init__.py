"""accsmooth exporter: dataset -> noisy base classifier -> Monte-Carlo targets -> surrogate ->
calibration -> ONNX bundle -> evaluation report. Run `python -m exporter --help`.

Each stage is one module that reads the previous stage's artifact from the work folder, so any
stage can be rerun alone; see `exporter.pipeline` for the order.
"""
