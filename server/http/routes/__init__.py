"""HTTP routes, one module per area; each handler is a thin call into `server.fast.surrogate`."""
