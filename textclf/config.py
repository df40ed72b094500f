"""ModelConfig <-> config.json and the ordered label list <-> labels.json.

The checkpoint describes itself: everything needed to rebuild the model lives here, never in flags.
"""
import dataclasses
import json
from pathlib import Path

from .errors import CheckpointError

FORMAT_VERSION = 1
EMBEDDINGS = ("transformer", "glove", "random")
# head: the transformer's own sequence-classification head (a Hugging Face *ForSequenceClassification model)
ENCODER_NAMES = ("cls", "cnn", "densenet-cnn", "densenet-dsa", "head")


# int8 exports are ONNX graphs quantized by ONNX Runtime (dynamic: activations scaled per batch), with one
# weight scale per output row (the default of --int8) or one per matrix. The "-7bit" forms keep weights in
# 7 bits, for CPUs without VNNI, where ONNX Runtime's AVX2 int8 kernels can overflow 16-bit sums.
QUANTIZATIONS = ("", "ort-dynamic-int8-per-channel", "ort-dynamic-int8", "ort-dynamic-int8-per-channel-7bit",
                 "ort-dynamic-int8-7bit")
# written by exports before int8 moved to ONNX Runtime (torch.ao's quantize_dynamic, deprecated)
TORCH_QUANTIZATIONS = ("dynamic-int8-per-channel", "dynamic-int8")
PRECISIONS = ("fp32", "bf16")               # bf16: the forward pass runs under torch.autocast (bfloat16)
# what the reject option thresholds (higher = more in scope): the calibrated top probability, the negative
# free energy T * logsumexp(logits / T), or minus the Mahalanobis distance of the classifier layer's input to the
# nearest class mean (textclf/mahalanobis.py; its means and precision in out_of_scope.safetensors)
# (benchmarks/open_set.py compares them)
OUT_OF_SCOPE_SCORES = ("probability", "energy", "mahalanobis")
NORMALIZATIONS = ("", "NFKC")               # Unicode normalisation of texts before tokenizing ("": none)


@dataclasses.dataclass
class ModelConfig:
    embedding: str = "transformer"          # transformer | glove | random
    encoder: str = "cls"                    # cls | cnn | densenet-cnn | densenet-dsa | head
    num_labels: int = 2
    max_length: int = 128
    dropout: float = 0.1
    # word embeddings (glove | random): vocab size and width; the vectors themselves are weights
    vocab_size: int = 0
    embedding_dim: int = 0
    freeze_embedding: bool = False
    # transformer embeddings: which layers were dropped and whether the backbone is frozen
    removed_layers: list = dataclasses.field(default_factory=list)
    freeze_transformer: bool = False
    # cnn / densenet encoders
    kernel_sizes: list = dataclasses.field(default_factory=lambda: [2, 3, 4])
    num_filters: int = 128
    densenet_layers: int = 4
    densenet_growth: int = 64
    densenet_kernel_size: int = 3
    dsa_heads: int = 2
    dsa_size: int = 128
    dsa_iterations: int = 3
    # exports: what was done to the trained model (applied by load_checkpoint)
    quantization: str = ""                  # "" or one of QUANTIZATIONS (ONNX runtime only)
    runtime: str = "torch"                  # torch | onnx
    precision: str = "fp32"                 # fp32 | bf16 (torch runtime)
    onnx_fusions: bool = False              # ONNX Runtime's transformer fusions applied to model.onnx
    # scores (train.calibrate): probabilities are softmax(logits / temperature); a text whose
    # out_of_scope_score is below out_of_scope_threshold (None: never) is answered "out of scope"
    temperature: float = 1.0
    out_of_scope_score: str = "probability"
    out_of_scope_threshold: float = None
    normalization: str = "NFKC"             # new checkpoints; a config.json without the field reads ""
    # multi-label: a text has any number of the labels; sigmoid per label, and a label is predicted where its
    # probability reaches its threshold (tuned per label on valid by training; None: 0.5 each)
    multi_label: bool = False
    thresholds: list = None
    format_version: int = FORMAT_VERSION

    def validate(self):
        if self.format_version != FORMAT_VERSION:
            raise CheckpointError(
                f"config.json has format_version {self.format_version}; this code reads {FORMAT_VERSION}")
        if self.embedding not in EMBEDDINGS:
            raise CheckpointError(f"unknown embedding {self.embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
        if self.encoder not in ENCODER_NAMES:
            raise CheckpointError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODER_NAMES)}")
        if self.encoder in ("cls", "head") and self.embedding != "transformer":
            raise CheckpointError(
                f"encoder {self.encoder!r} needs a transformer embedding (got {self.embedding!r}); with word embeddings "
                "use one of: cnn, densenet-cnn, densenet-dsa")
        if self.quantization in TORCH_QUANTIZATIONS:
            raise CheckpointError(
                f"this checkpoint is a PyTorch int8 export ({self.quantization!r}), which this version no longer "
                "loads: export the float checkpoint again with `python -m train.export --int8` (ONNX Runtime int8)")
        if self.quantization not in QUANTIZATIONS:
            raise CheckpointError(f"unknown quantization {self.quantization!r}; this code reads "
                                  f"{', '.join(repr(q) for q in QUANTIZATIONS)}")
        if self.quantization and self.runtime != "onnx":
            raise CheckpointError(f"quantization {self.quantization!r} needs runtime 'onnx', got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise CheckpointError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.precision != "fp32" and self.runtime != "torch":
            raise CheckpointError(f"precision {self.precision!r} needs runtime 'torch', got {self.runtime!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < 1e3):
            raise CheckpointError(f"temperature must be a positive number, got {self.temperature!r}")
        if self.out_of_scope_score not in OUT_OF_SCOPE_SCORES:
            raise CheckpointError(f"unknown out_of_scope_score {self.out_of_scope_score!r}; choose one of "
                                  f"{', '.join(OUT_OF_SCOPE_SCORES)}")
        if self.out_of_scope_threshold is not None and not isinstance(self.out_of_scope_threshold, (int, float)):
            raise CheckpointError(f"out_of_scope_threshold must be a number or null, got {self.out_of_scope_threshold!r}")
        if self.normalization not in NORMALIZATIONS:
            raise CheckpointError(f"unknown normalization {self.normalization!r}; choose one of "
                                  f"{', '.join(repr(n) for n in NORMALIZATIONS)}")
        if self.multi_label and self.out_of_scope_threshold is not None:
            raise CheckpointError("a multi-label checkpoint has per-label thresholds instead of an out-of-scope "
                                  "threshold (a text over none of them has no label)")
        if self.thresholds is not None and (not self.multi_label or not isinstance(self.thresholds, list)
                                            or len(self.thresholds) != self.num_labels
                                            or not all(isinstance(t, (int, float)) and 0 <= t <= 1
                                                       for t in self.thresholds)):
            raise CheckpointError(f"thresholds must be a list of {self.num_labels} numbers from 0 to 1, one per "
                                  "label, in a multi-label checkpoint")
        if self.num_labels < 2:
            raise CheckpointError(f"num_labels must be at least 2, got {self.num_labels}")
        if self.max_length < 1:
            raise CheckpointError(f"max_length must be positive, got {self.max_length}")
        return self

    def to_json_file(self, path):
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json_file(cls, path):
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} must hold a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(f"{path} has unknown fields: {', '.join(unknown)}")
        raw.setdefault("normalization", "")   # checkpoints from before normalisation read their texts as they are
        return cls(**raw).validate()


# Transformers whose position ids start after the padding id (pad_token_id + 1): fewer usable positions.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart", "data2vec-text")


def position_limit(transformer_config):
    """How many tokens a transformer backbone takes (its config as a dict), or None when it does not say."""
    positions = transformer_config.get("max_position_embeddings")
    if not isinstance(positions, int) or transformer_config.get("position_embedding_type", "absolute") != "absolute":
        return None
    if transformer_config.get("model_type") in _OFFSET_POSITIONS:
        positions -= int(transformer_config.get("pad_token_id") or 0) + 1
    return positions


def check_max_length(max_length, transformer_config, where="the backbone"):
    """CheckpointError when max_length is beyond the backbone's position embeddings (a long text would fail)."""
    limit = position_limit(transformer_config)
    if limit is not None and max_length > limit:
        raise CheckpointError(
            f"max_length {max_length} is more than {where} takes: max_position_embeddings "
            f"{transformer_config['max_position_embeddings']}"
            + (f" ({limit} usable positions)" if limit != transformer_config["max_position_embeddings"] else "")
            + f". To fix: use --max-length {limit} or less")


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def save_labels(labels, path):
    Path(path).write_text(json.dumps(list(labels), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def load_labels(path):
    labels = read_json(path)
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise CheckpointError(f"{path} must be a JSON list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"{path} has duplicate labels")
    return labels


def read_model_config(path):
    """A TorchServe model-config.yaml as a dict, with its handler section as a dict (empty when absent): the
    serving settings (workers, batchSize, handler: {...}) that train.optimize, the benchmarks and the serving
    tools read. PyYAML is imported here only: the handler gets the parsed file from TorchServe."""
    import yaml
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    config["handler"] = config.get("handler") or {}
    return config
