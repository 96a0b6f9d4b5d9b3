"""Adapters that let other tools use lmlab models (each module imports its tool only when used).

pyctcdecode.py  an lmlab n-gram as pyctcdecode's language model (CTC beam search without the kenlm module)
"""
