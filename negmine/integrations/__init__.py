"""Bridges to training frameworks; each imports its framework lazily.

``negmine.integrations.sentence_transformers.mine_hard_negatives`` is a drop-in
for sentence-transformers' function of the same name.
"""
