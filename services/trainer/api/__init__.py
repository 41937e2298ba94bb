"""HTTP layer of the trainer: routes, dependencies and the error handler."""
