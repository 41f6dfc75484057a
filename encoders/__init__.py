"""Modality encoders: the audio encoder (Parakeet FastConformer) and the vision encoder (C-RADIO
ViT with pixel shuffle) for images and video, including their pre-processing and the token
reduction steps (e.g. efficient video sampling) that shrink what reaches the decoder."""
