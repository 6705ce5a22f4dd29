"""Business rules between the API routes and `keel_server.db`: every function takes a
`ServiceContext` and a `Principal`, owns its transaction, returns `keel.types` models and raises
only `ServiceError`. No FastAPI, no worker code."""
