"""Readers of the weight and architecture files the models load, all treated as untrusted input.

* ``files``: JSON, ``.npz`` and state dicts (``.pth`` through ``torch_file``, ``.safetensors``);
* ``torch_file``: PyTorch ``.pth`` checkpoints without PyTorch and without running their code;
* ``int8``: the MIT tiny-training int8 networks (``NAME.json`` + ``NAME.npz``) and the shipped
  arch-only descriptions ``arch/*.json``;
* ``zoo``: the MCUNet model-zoo fp32 networks (``<zoo id>.json`` + ``.pth``);
* ``torchvision``: torchvision / timm ResNet and MobileNetV2 state dicts.

Every reader names the file in its errors (method-spec 8 lists the networks and their sources).
"""
