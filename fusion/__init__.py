"""Fusion of modalities into one decoder input: the projectors that map encoder features to the
decoder width, prompt building with multimodal placeholder tokens, and the embedding stream that
replaces those placeholders' embeddings in place before the decoder runs."""
