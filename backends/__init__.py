"""Cleancache backends: the interface (base), the registry, one module per backend."""
