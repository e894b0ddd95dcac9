"""Transformers whose every linear layer is a ``SelectiveDense``: the shared blocks
(``attention``), BERT / RoBERTa (``bert``), ViT (``vit``) and Swin (``swin``)."""
