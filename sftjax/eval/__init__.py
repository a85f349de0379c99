"""Evaluation suites and their runner: GSM8K-style math accuracy (:mod:`.math`), HumanEval pass@k (:mod:`.code`,
completions run in :mod:`.sandbox`), knowledge injection (:mod:`.knowledge`), LLM-judge rubrics (:mod:`.judge`,
:mod:`.judge_rubrics`, :mod:`.judge_http`) and held-out loss, all run by :mod:`.runner` in training and sftjax-eval.

Submodules are imported explicitly (``from sftjax.eval import math as eval_math``) so that importing the package
does not shadow the standard library's ``math`` inside callers' namespaces.
"""
