"""Headers and config parameters both sides of the wire agree on."""

# Triton checks restricted protocols against a header: over HTTP by its own name, over gRPC with Triton's prefix.
API_KEY_HEADER = "nestrank-api-key"  # inference, model config, metadata, statistics (when the server has an API key)
ADMIN_KEY_HEADER = "nestrank-admin-key"  # shared memory, model repository, trace, logging
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
VERSION_PARAMETER = "nestrank_version"  # config.pbtxt parameter: the nestrank that exported the model


def grpc_header(name: str) -> str:
    return GRPC_HEADER_PREFIX + name
