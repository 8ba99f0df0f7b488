"""ONNX frontend: ModelProto -> graph dialect."""

from strataml.frontends.onnx.importer import import_model, load_model_proto

__all__ = ["import_model", "load_model_proto"]
