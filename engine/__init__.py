"""The decoder engine: NemotronH model code (Mamba2 / attention / MoE layers), per-request state
and caches, checkpoint loading, tokenization and the generation loop."""
