"""Custom GPU kernels (Triton) for the hot paths of the engine, each with a plain PyTorch reference
implementation that defines its semantics and is used for testing and on machines without a GPU."""
