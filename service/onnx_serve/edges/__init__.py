"""The edges: one sub-package per wire protocol (grpc/, http/), each a thin layer over core.dataplane.DataPlane;
shared.py holds what they share (PortUnavailable, the token file)."""
