"""bissl_dense: the BiSSL library — bilevel core, pretext methods and dense-task integration."""

__version__ = "0.1.0"
