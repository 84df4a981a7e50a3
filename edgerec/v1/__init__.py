"""Generated protobuf and gRPC code for protos/edgerec/v1 (do not edit).

Regenerate with ``python -m edgerec.tools.gen_protos``.
"""
