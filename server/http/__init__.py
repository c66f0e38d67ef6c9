"""The HTTP face of the server: the app factory, routes, middleware, the raw-body fast path
(`fastpath`), the error table, dependencies, OpenAPI extras and the response schemas."""
