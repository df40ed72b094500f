"""TrainConfig: the arguments of a training run, saved as train_args.json. CLI flags are made from it."""
import argparse
import dataclasses

from textclf.data import COLUMNS


def _field(default, help, **kw):
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class TrainConfig:
    data: str = _field(None, "folder with train.txt|tsv, optional valid.* and test.*", required=True)
    out: str = _field(None, "run folder: checkpoint-best/, checkpoint-last/, metrics.jsonl, curves.png", required=True)
    columns: str = _field("auto", "column order of the data files", choices=COLUMNS)
    embedding: str = _field("minilm", "minilm (the packaged all-MiniLM-L6-v2), a local Hugging Face "
                            "BERT-family folder, glove (GloVe 6B 50d package), glove:PATH (a vectors text "
                            "file), or random (learned from scratch)")
    encoder: str = _field("cls", "cls | cnn | densenet-cnn | densenet-dsa | head (the transformer's own "
                                          "sequence-classification head and pooler, as transformers builds it)")
    epochs: int = _field(3, "passes over the training data")
    batch_size: int = _field(32, "training batch size")
    lr: float = _field(None, "peak learning rate (default: 5e-5 for transformers, 1e-3 for word embeddings)")
    weight_decay: float = _field(0.01, "AdamW weight decay (not applied to biases, norms, embeddings)")
    warmup_ratio: float = _field(0.1, "share of the steps spent warming the learning rate up")
    lr_decay_rate: float = _field(0.0, "if set, multiply the learning rate by this after every epoch "
                                  "instead of decaying it linearly (iclassifier's --lr_decay_rate)")
    max_grad_norm: float = _field(1.0, "gradient clipping norm")
    max_length: int = _field(128, "tokens per text; longer texts are truncated")
    dropout: float = _field(0.1, "dropout before the classifier")
    normalization: str = _field("NFKC", "Unicode normalisation of every text before tokenizing, in training and "
                                "serving alike: NFKC (full-width and compatibility forms as plain letters) or none",
                                choices=("NFKC", "none"))
    multi_label: bool = _field(False, "several labels per text: the label field holds them separated by "
                               "--label-separator (JSON Lines: a \"labels\" list); sigmoid outputs, binary "
                               "cross-entropy, the best checkpoint by valid micro-F1, per-label thresholds")
    label_separator: str = _field(",", "multi-label: what separates the labels of one text in a label field")
    allow_no_label: bool = _field(False, "multi-label: a line with an empty label field is a text with no label "
                                  "(otherwise an error naming the line)")
    pos_weight: str = _field("", "multi-label: auto weighs each label's positives by its negatives/positives in "
                             "train (rare labels count more, at most 100x); empty: no weighting")
    threshold: float = _field(0.0, "multi-label: one decision threshold for every label instead of tuning one "
                              "per label on valid (0: tune)")
    calibrate: bool = _field(True, "after training, fit the temperature of checkpoint-best on valid (train.calibrate); a "
                             "multi-label model's per-label thresholds are tuned either way")
    target_precision: float = _field(0.0, "if set, also store an out-of-scope threshold: the lowest whose in-scope "
                                     "precision on valid reaches this (see train.calibrate); 0: none")
    seed: int = _field(42, "seed for initialisation, shuffling and the valid split")
    length_buckets: int = _field(0, "if N > 0, batch texts of similar length together: shuffle, sort each run of "
                                 "N batches by text length, cut it into batches and shuffle those (less padding, "
                                 "faster on long or mixed-length data); 0: plain shuffled batches")
    skip_empty: bool = _field(False, "drop data lines whose text is empty, with a warning naming them, instead "
                              "of stopping at the first (WebKB has 31: pages its preprocessing left empty)")
    limit: int = _field(0, "use only the first N training examples (0: all)")
    valid_fraction: float = _field(0.1, "share of train held out when the data has no valid file")
    patience: int = _field(0, "stop after this many epochs without a better valid accuracy (0: never)")
    save_every_epoch: bool = _field(False, "also keep checkpoint-epoch-N/ for every epoch")
    resume: str = _field("", "continue training from this checkpoint folder (its architecture wins)")
    remove_layers: str = _field("", "comma-separated transformer layer indices to drop before fine-tuning")
    freeze_transformer: bool = _field(False, "feature-based: keep the transformer fixed, train the rest")
    freeze_embedding: bool = _field(False, "keep pretrained word vectors fixed (words without one still learn)")
    min_count: int = _field(1, "word embeddings: keep training words seen at least this often")
    embedding_dim: int = _field(100, "random word embeddings: vector width")
    glove_top: int = _field(50000, "word vectors: also keep the N most frequent words of the vectors file")
    kernel_sizes: str = _field("2,3,4", "cnn: comma-separated kernel widths")
    num_filters: int = _field(128, "cnn: filters per kernel width")
    densenet_layers: int = _field(4, "densenet: convolution layers in the block")
    densenet_growth: int = _field(64, "densenet: channels each layer adds")
    densenet_kernel_size: int = _field(3, "densenet: convolution width")
    dsa_heads: int = _field(2, "densenet-dsa: attention heads")
    dsa_size: int = _field(128, "densenet-dsa: width of each attention head")
    dsa_iterations: int = _field(3, "densenet-dsa: routing iterations")
    eval_batch_size: int = _field(64, "batch size for validation and test")
    device: str = _field("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    threads: int = _field(0, "torch CPU threads (0: torch's default; under torchrun: the cores split among the "
                          "ranks of the machine)")
    dist_timeout: float = _field(300.0, "under torchrun: seconds for every rank to join the process group, "
                                 "after which a rank stops with an error instead of waiting")

    def int_list(self, name):
        value = getattr(self, name)
        try:
            return [int(x) for x in value.split(",") if x.strip()] if value else []
        except ValueError:
            raise SystemExit(f"--{name.replace('_', '-')}: expected comma-separated integers, got {value!r}")


def _bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser(cls, description):
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        flag = "--" + f.name.replace("_", "-")
        kw = {"help": meta.pop("help"), "dest": f.name, **meta}
        if f.type in (bool, "bool"):
            parser.add_argument(flag, nargs="?", const=True, default=f.default, type=_bool, **kw)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, type=kind if kind in (int, float, str) else str,
                                default=None if meta.get("required") else f.default, **kw)
    return parser


def parse_train_config(argv=None):
    parser = build_parser(TrainConfig, "Train a text classifier.")
    args = parser.parse_args(argv)
    if not args.multi_label and (args.allow_no_label or args.pos_weight or args.threshold):
        parser.error("--allow-no-label, --pos-weight and --threshold apply to --multi-label training")
    if args.pos_weight not in ("", "auto"):
        parser.error(f"--pos-weight takes auto (or nothing), got {args.pos_weight!r}")
    if not args.label_separator:
        parser.error("--label-separator must not be empty")
    return TrainConfig(**vars(args))
