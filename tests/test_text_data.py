"""Text data: checkpoint tokenizers from generated vocabularies, GLUE over tfds mock data, generated
text, and their batches through the loader. CPU only, nothing downloaded."""

import numpy as np
import pytest

from trady_jax import data
from trady_jax.config import Config, ConfigError
from trady_jax.data import synthetic_text, tokenizer as tokenizer_lib

tk = pytest.importorskip("tokenizers", reason="text data needs `tokenizers` (extra 'text')")

CORPUS = ["What is the capital of France?", "Paris is the capital and largest city of France.",
          "The quick brown fox jumps over the lazy dog.", "Héllo Wörld, a naïve café!",
          "unbelievable tokenisation of unseen words works", "it was a gripping, moving film"]
PAIRS = [(CORPUS[0], CORPUS[1]), (CORPUS[3], None), ("unbelievable " * 30, "short one"),
         ("Paris " * 40, "France"),
         ("a b", "quick brown " * 25), (CORPUS[2], CORPUS[4])]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  """A WordPiece ``vocab.txt`` trained on CORPUS (BERT's specials first, ``##`` pieces)."""
  folder = tmp_path_factory.mktemp("bert")
  trained = tk.BertWordPieceTokenizer(lowercase=True)
  trained.train_from_iterator(CORPUS * 5, vocab_size=160, min_frequency=1,
                              special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
  trained.save_model(str(folder))
  return folder


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
  """A byte-level BPE ``vocab.json`` + ``merges.txt`` trained on CORPUS (RoBERTa's specials)."""
  folder = tmp_path_factory.mktemp("roberta")
  trained = tk.ByteLevelBPETokenizer()
  trained.train_from_iterator(CORPUS * 5, vocab_size=400, min_frequency=1,
                              special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  trained.save_model(str(folder))
  return folder


def _segments(ids, sep_id, pad_id):
  """BERT's token types as the model derives them: 1 after the first separator, not on padding."""
  sep = ids == sep_id
  return ((np.cumsum(sep) - sep) > 0) & (ids != pad_id)


def test_bert_pair_layout_padding_and_longest_first_truncation(bert_dir):
  tok = data.TextTokenizer(bert_dir)
  assert (tok.family, tok.pad_id, tok.cls_id, tok.sep_id) == ("bert", 0, 2, 3)
  ids = tok.encode_pair(*PAIRS[0], max_length=48)
  assert ids.dtype == np.int32 and ids.shape == (48,)
  n = int((ids != tok.pad_id).sum())
  assert ids[0] == tok.cls_id and ids[n - 1] == tok.sep_id and (ids[n:] == tok.pad_id).all()
  assert (ids == tok.sep_id).sum() == 2
  first_sep = int(np.argmax(ids == tok.sep_id))
  b_alone = tok.encode_pair(PAIRS[0][1], max_length=48)
  segment_b = ids[_segments(ids, tok.sep_id, tok.pad_id)]
  np.testing.assert_array_equal(segment_b[:-1], b_alone[1:(b_alone != 0).sum() - 1])
  assert first_sep == (tok.encode_pair(PAIRS[0][0], max_length=48) != 0).sum() - 1
  cut = tok.encode_pair("unbelievable " * 30, "France", max_length=16)  # a is cut, b is kept
  assert (cut != tok.pad_id).all() and cut[-1] == tok.sep_id and (cut == tok.sep_id).sum() == 2
  short_b = tok.encode_pair("France", max_length=16)
  n_b = int((short_b != 0).sum()) - 2
  np.testing.assert_array_equal(cut[-n_b - 1:-1], short_b[1:n_b + 1])
  with pytest.raises(ValueError, match="no room"):
    tok.encode_pair("a", "b", max_length=3)


def test_roberta_pair_layout(roberta_dir):
  tok = data.TextTokenizer(roberta_dir)
  assert (tok.family, tok.cls_id, tok.pad_id, tok.sep_id) == ("roberta", 0, 1, 2)
  ids = tok.encode_pair("a b", "c d", max_length=12)
  n = int((ids != tok.pad_id).sum())
  seps = np.flatnonzero(ids == tok.sep_id)
  assert ids[0] == tok.cls_id and len(seps) == 3 and seps[1] == seps[0] + 1 and seps[2] == n - 1
  assert (ids[n:] == tok.pad_id).all()
  many = tok.encode_pairs(["a b", "Paris"], ["c d", "France"], max_length=12)
  np.testing.assert_array_equal(many[0], ids)
  assert many.shape == (2, 12) and many.dtype == np.int32


def test_same_ids_as_transformers(bert_dir, roberta_dir, tmp_path):
  transformers = pytest.importorskip(
      "transformers", reason="the reference tokenizers come from transformers (not installed)")
  cased = tmp_path / "cased"
  cased.mkdir()
  (cased / "vocab.txt").write_bytes((bert_dir / "vocab.txt").read_bytes())
  (cased / "tokenizer_config.json").write_text('{"do_lower_case": false}')
  saved = {}  # tokenizer.json (with tokenizer_config.json) as transformers writes them
  for name, folder, cls in (("bert", bert_dir, transformers.BertTokenizer),
                            ("roberta", roberta_dir, transformers.RobertaTokenizer)):
    saved[name] = tmp_path / f"saved-{name}"
    cls.from_pretrained(str(folder)).save_pretrained(str(saved[name]))
    assert (saved[name] / "tokenizer.json").is_file()
  references = [(bert_dir, transformers.BertTokenizer), (cased, transformers.BertTokenizer),
                (roberta_dir, transformers.RobertaTokenizer),
                (saved["bert"], transformers.AutoTokenizer),
                (saved["roberta"], transformers.AutoTokenizer)]
  for folder, cls in references:
    ours, ref = data.TextTokenizer(folder), cls.from_pretrained(str(folder))
    for a, b in PAIRS:
      for length in (16, 64):
        want = ref(a, b, truncation=True, max_length=length, padding="max_length")["input_ids"]
        assert ours.encode_pair(a, b, length).tolist() == want, (folder.name, a, b, length)
  upper = data.TextTokenizer(cased).encode_pair("Paris", max_length=8)
  assert upper[1] != data.TextTokenizer(bert_dir).encode_pair("Paris", max_length=8)[1]


def test_tokenizer_folder_errors(tmp_path):
  with pytest.raises(tokenizer_lib.TokenizerError, match="holds no tokenizer"):
    data.TextTokenizer(tmp_path)
  with pytest.raises(tokenizer_lib.TokenizerError, match="does not exist"):
    data.TextTokenizer(tmp_path / "missing")
  (tmp_path / "vocab.txt").write_text("hello\nworld\n")
  with pytest.raises(tokenizer_lib.TokenizerError, match=r"no \[CLS\], \[SEP\], \[PAD\]"):
    data.TextTokenizer(tmp_path)


def test_glue_sources_on_tfds_mock_data(bert_dir):
  tfds = pytest.importorskip("tensorflow_datasets")
  tok = data.TextTokenizer(bert_dir)
  with tfds.testing.mock_data(num_examples=10):
    for name, seps in (("glue/qnli", 2), ("glue/rte", 2), ("glue/sst2", 1)):
      src = data.open_text_dataset(name, "test", tok, max_length=32)
      assert isinstance(src, data.GlueSource) and src.split == "validation" and len(src) == 10
      assert src.num_classes == 2 and len(src.class_names) == 2 and src.protocol == "text"
      raw = src._ds[3]  # the mock example, tokenised here by hand
      texts = [raw[k] for k in data.glue.GLUE_TASKS[name].text_keys] + [None]
      ids, label = src[3]
      np.testing.assert_array_equal(ids, tok.encode_pair(texts[0], texts[1], 32))
      assert ids.dtype == np.int32 and ids[0] == tok.cls_id and label == int(raw["label"])
      assert ((ids == tok.sep_id).sum(axis=-1) == seps).all()
      batch = next(data.batches(src, 4, train=True, seed=0, num_workers=2))
      assert batch["image"].shape == (4, 32) and batch["image"].dtype == np.int32
      assert batch["label"].dtype == np.int32 and set(batch["label"]) <= {0, 1}
      order = data.epoch_order(10, shuffle=True, seed=0, epoch=0)[:4]
      np.testing.assert_array_equal(batch["image"], np.stack([src[i][0] for i in order]))
      cached = data.open_text_dataset(name, "test", tok, max_length=32).tokenize_all()
      np.testing.assert_array_equal(cached._ids, np.stack([src[i][0] for i in range(10)]))


def test_generated_text_is_deterministic_balanced_and_learnable():
  train = data.open_text_dataset("synthetic-text", "train", num_examples=400, max_length=64)
  test = data.open_text_dataset("synthetic-text", "test", num_examples=200, max_length=64)
  again = data.SyntheticTextSource(400, max_length=64)
  np.testing.assert_array_equal(train[7][0], again[7][0])
  assert not np.array_equal(train[7][0], test[7][0])  # the splits differ
  assert np.bincount(train.labels).tolist() == [200, 200]
  ids, label = train[5]
  n = int((ids != 0).sum())
  assert ids.dtype == np.int32 and ids[0] == 101 and ids[n - 1] == 102 and (ids == 102).sum() == 2
  assert ids.max() < train.vocab_size and not np.isin(ids[1:n], np.arange(104)[1:101]).any()

  def bags(src):  # token counts of every example
    x = np.stack([np.bincount(src[i][0], minlength=src.vocab_size) for i in range(len(src))])
    return x.astype(np.float32), src.labels

  x, y = bags(train)
  counts = np.stack([x[y == c].sum(0) for c in range(2)]) + 1  # multinomial naive Bayes
  log_p = np.log(counts / counts.sum(1, keepdims=True))
  xt, yt = bags(test)
  accuracy = (np.argmax(xt @ log_p.T, 1) == yt).mean()
  assert accuracy >= 0.95  # a bag of tokens, learnt from the training split, separates the classes
  roberta = data.SyntheticTextSource(10, max_length=32, family="roberta")
  ids = roberta[0][0]
  seps = np.flatnonzero(ids == 2)
  assert ids[0] == 0 and len(seps) == 3 and seps[1] == seps[0] + 1 and ids[-1] == 1


def test_generated_text_in_a_tokenizers_vocabulary(tmp_path, roberta_dir):
  folder = synthetic_text.write_generated_vocab(tmp_path / "gen", vocab_size=300)
  tok = data.TextTokenizer(folder)
  assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.vocab_size) == (0, 101, 102, 300)
  assert tok.encode_pair("w200 w201", max_length=6).tolist() == [101, 200, 201, 102, 0, 0]
  src = data.SyntheticTextSource(20, max_length=32, tokenizer=roberta_dir)
  ids = np.stack([src[i][0] for i in range(20)])
  assert src.family == "roberta" and (ids[:, 0] == 0).all() and ids.max() < src.vocab_size
  batch = next(data.batches(src, 8, train=False, pad_remainder=True, num_workers=0,
                            start_step=2))
  assert batch["image"].shape == (8, 32) and batch["mask"].sum() == 4


def test_open_data_for_text_configs(bert_dir, tmp_path, capsys):
  from trady_jax.experiment import checks, inputs  # noqa: PLC0415
  cfg = Config(dataset="synthetic-text", arch="roberta-base", train_limit=100, test_limit=50,
               image_size=64)  # a text model's image_size is its token count
  train, test, num_classes, where = inputs.open_data(cfg)
  assert (len(train), len(test), num_classes, where) == (100, 50, 2, "generated text")
  assert train[0][0].shape == (64,)
  assert np.bincount(train.labels).tolist() == [50, 50] and train[0][0][0] == 0  # RoBERTa's <s>
  with pytest.raises(ConfigError, match="needs the checkpoint's tokenizer"):
    inputs.open_data(Config(dataset="glue/rte"))
  with pytest.raises(ConfigError, match="needs the checkpoint's tokenizer"):
    checks.check_tokenizer(Config(dataset="glue/rte"))
  with pytest.raises(ConfigError, match="--tokenizer .* no tokenizer.json"):
    checks.check_tokenizer(Config(dataset="glue/rte", tokenizer=str(tmp_path)))
  checks.check_tokenizer(Config(dataset="glue/rte", weights_dir=str(bert_dir)))
  with pytest.raises(ConfigError, match="only text datasets"):
    Config(dataset="cifar10", tokenizer=str(bert_dir)).validate()
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    train, test, _, where = inputs.open_data(Config(dataset="glue/sst2", tokenizer=str(bert_dir)))
    assert test[0][0].shape == (128,)
  assert isinstance(test, data.GlueSource) and test.split == "validation" and "GLUE" in where
  missing = Config(dataset="glue/qnli", tokenizer=str(bert_dir), offline=True,
                   data_dir=str(tmp_path / "no-tfds"))
  train, _, _, where = inputs.open_data(missing)
  assert where == "generated text" and train[0][0][0] == 2  # in the tokenizer's layout
  assert "GENERATED text" in capsys.readouterr().out


def test_text_transform_keeps_ids():
  transform = data.make_transform(True, protocol="text")
  out = transform(np.array([101, 5, 102, 0], np.int64), None)
  assert out.dtype == np.int32 and out.tolist() == [101, 5, 102, 0]
  with pytest.raises(ValueError, match="'text'"):
    data.make_transform(True, protocol="audio")


def test_the_checkpoint_folder_found_by_name_provides_the_tokenizer(bert_dir, tmp_path):
  from trady_jax.experiment import inputs  # noqa: PLC0415
  ckpt = tmp_path / "bert-base"  # where models.hub looks for the bert-base checkpoint
  ckpt.mkdir()
  (ckpt / "config.json").write_text("{}")
  (ckpt / "model.safetensors").write_bytes(b"")
  (ckpt / "vocab.txt").write_text((bert_dir / "vocab.txt").read_text())
  cfg = Config(dataset="synthetic-text", arch="bert-base", weights_dir=str(tmp_path),
               train_limit=8, test_limit=8, image_size=32)
  train, _, _, _ = inputs.open_data(cfg)
  assert train.source.vocab_size == 160  # the checkpoint's vocabulary, not the generated one
  assert inputs.open_data(Config(dataset="synthetic-text", arch="bert-base", train_limit=8,
                                 test_limit=8, image_size=32))[0].source.vocab_size != 160
