"""Studies over seeds and searches over configs: ``compare`` (configs x seeds, resumable), ``tune`` (Optuna,
ranked on validation only), ``space`` (search-space files) and ``ray_executor`` (the one Ray task loop both use).
"""
