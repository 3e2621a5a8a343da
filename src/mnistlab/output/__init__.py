"""What people read: ``plots`` (figures, English and Korean), ``report`` (the generated report) and
``tracking`` (TensorBoard and MLflow trackers).
"""
