"""Example models and data for users to copy (and for the supervisor's tests).

``trainer.examples.digits`` is the reference example; ``trainer.examples.faulty``
holds test-only variants that hang or crash on purpose. Importing this package
does not import torch: each example module does.
"""
