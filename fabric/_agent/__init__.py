"""The node agent: local scheduler, object store, worker pool, and the agent's gRPC services."""
