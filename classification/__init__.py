"""BiSSL on the 12 classification datasets, on the same bilevel core as ``bissl_dense``."""
