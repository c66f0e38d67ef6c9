"""Schema fuzzing of the HTTP API with schemathesis: `make fuzz` (see `tests.fuzz.__main__`)."""
