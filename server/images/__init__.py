"""Image bytes to model input: the core's decoding and checks (`accsmooth.images`) with the
server's errors (`imaging`), on a bounded, niced thread pool (`decoder`)."""
