"""Transformer checkpoints found on disk and loaded by name (``models.hub``, ``load_network``)."""

import jax.numpy as jnp
import numpy as np
import pytest

from trady_jax import models
from trady_jax.models import hub

torch = pytest.importorskip("torch", reason="the reference checkpoints are written with PyTorch")
transformers = pytest.importorskip("transformers", reason="pip install -e '.[reference]'")


def _save_bert(directory, model_type="bert"):
  cls = {"bert": (transformers.BertConfig, transformers.BertModel),
         "roberta": (transformers.RobertaConfig, transformers.RobertaModel)}[model_type]
  cfg = cls[0](vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=40)
  torch.manual_seed(0)
  cls[1](cfg).save_pretrained(directory)
  return directory


def test_a_named_transformer_loads_its_checkpoint_with_a_fresh_head(tmp_path):
  d = _save_bert(tmp_path / "bert-base")
  assert hub.find_checkpoint("bert-base", tmp_path) == d
  net = models.load_network("bert-base", 3, weights_dir=tmp_path)
  assert net.module.config.layers == 2 and net.batch_stats is None
  assert net.params["classifier"]["out"]["kernel"].shape == (16, 3)
  assert net.weights == str(d)
  ids = jnp.asarray(np.arange(1, 11).reshape(1, 10), jnp.int32)
  assert net.module.apply({"params": net.params}, ids).shape == (1, 3)


def test_a_checkpoint_of_another_model_type_is_refused(tmp_path):
  _save_bert(tmp_path / "bert-base", "roberta")
  with pytest.raises(ValueError, match="'roberta' checkpoint, not bert-base"):
    models.load_network("bert-base", 2, weights_dir=tmp_path)


def test_no_checkpoint_says_where_it_looked(tmp_path):
  with pytest.raises(FileNotFoundError, match="no vit-b16 checkpoint.*download=True"):
    models.load_network("vit-b16", 10, weights_dir=tmp_path)
