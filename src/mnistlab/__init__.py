"""mnistlab: the report's MNIST MLP experiment as a fast, reproducible tool and library."""

__version__ = "0.1.0"
