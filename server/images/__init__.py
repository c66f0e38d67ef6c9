"""Image bytes to model input: Pillow decoding and checks (`imaging`) on a bounded, niced
thread pool (`decoder`)."""
