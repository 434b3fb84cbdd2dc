"""The step critic: a Hugging Face token classifier whose value at each step end estimates P(correct).

Monte-Carlo step labels (:mod:`.labelling`), training (:mod:`.training`), single-pass scoring
(:mod:`.scoring`), evaluation (:mod:`.evaluation`, :mod:`.metrics`) and an HTML inspector.
"""
