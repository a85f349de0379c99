"""Evaluation: GSM8K-style math accuracy (:mod:`.math`) and HumanEval pass@k (:mod:`.code`) run in :mod:`.sandbox`.

Submodules are imported explicitly (``from sftjax.eval import math as eval_math``) so that importing the package
does not shadow the standard library's ``math`` inside callers' namespaces.
"""
