"""edges/grpc"""
