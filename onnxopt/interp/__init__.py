"""The reference interpreter: ``Interpreter(model).run(feeds, capture=None, callback=None)``."""

from onnxopt.interp.interpreter import InputSpec, Interpreter

__all__ = ["InputSpec", "Interpreter"]
