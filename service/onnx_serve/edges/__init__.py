"""The edges: one sub-package per wire protocol (grpc/), each a thin layer over core.dataplane.DataPlane."""
