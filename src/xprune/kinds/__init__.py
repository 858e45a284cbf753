"""The unit kinds of the core: ``"channels"`` (:mod:`.channels`) and ``"weights"`` (:mod:`.weights`).

They are registered lazily in :mod:`xprune.units`; ``"heads"`` and ``"neurons"`` live in
:mod:`xprune.transformers.kinds`.
"""
