"""Model weights made or registered offline: importers that turn weights shipped inside installed packages
into the state dicts our loaders read (``python -m facelake.models import NAME --out DIR``)."""
