"""The PyTorch backend: .pt2 programs, TorchScript, state_dicts and in-memory modules."""
