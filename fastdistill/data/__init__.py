"""Dataset loading, prompt templates and collators.

``load_supervised_dataset`` and the prompt templates need only ``datasets``; the collators
(``fastdistill.data.collators``) need torch and are imported from there explicitly.
"""
