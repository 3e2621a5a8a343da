"""mnistlab: the report's MNIST MLP experiment as a fast, reproducible tool and library.

import mnistlab
clf = mnistlab.load_model("runs/reproduce-20261126-120000")   # a run directory
clf.predict(["digit.png", pil_image, numpy_array])[0].prediction
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Classifier", "__version__", "load_model"]


def __getattr__(name: str) -> Any:  # keep `import mnistlab` light: torch loads on first use
    if name in ("load_model", "Classifier"):
        from .deploy import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")
