"""torchhefl: federated training of PyTorch models with Paillier-encrypted parameters."""

__version__ = "0.1.0"

__all__ = ["__version__"]
