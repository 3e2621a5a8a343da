"""Using a trained model: ``predict`` (images of any kind -> MNIST-style inputs -> classes), ``export``
(ONNX) and ``serve`` (the web API and demo page).
"""
