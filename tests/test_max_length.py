"""max_length against the backbone's position embeddings: refused at training, export and load time with
an error naming both numbers, instead of serving until a long text arrives and then failing its batch."""
import json
import subprocess

import pytest

from conftest import ROOT, run_failing_cli, train_args
from textclf.checkpoint import check_folder, load_checkpoint
from textclf.config import position_limit
from textclf.errors import CheckpointError
from textclf.predict import Predictor

MESSAGE = "max_length 200 is more than the backbone in"


@pytest.fixture
def too_long(ckpt_copy):
    """The tiny checkpoint (backbone: max_position_embeddings 128) claiming max_length 200."""
    config = json.loads((ckpt_copy / "config.json").read_text())
    config["max_length"] = 200
    (ckpt_copy / "config.json").write_text(json.dumps(config))
    return ckpt_copy


def test_training_refuses_a_max_length_the_backbone_cannot_take(tmp_path, tiny_bert_dir, toy_data_dir, capfd, caplog):
    from train.__main__ import main
    args = train_args(toy_data_dir, tmp_path / "run", tiny_bert_dir, epochs=1)
    args[args.index("--max-length") + 1] = "200"
    rc, text = run_failing_cli(main, capfd, caplog, args)
    assert rc == 2
    assert "max_length 200 is more than" in text and "max_position_embeddings 128" in text
    assert "--max-length 128" in text
    assert not (tmp_path / "run" / "checkpoint-best").exists()


def test_loading_refuses_it(too_long):
    for load in (check_folder, load_checkpoint, Predictor.from_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(too_long)
        assert MESSAGE in str(err.value) and "max_position_embeddings 128" in str(err.value)


def test_export_refuses_it(too_long, tmp_path, capfd, caplog):
    from train.export import main
    rc, text = run_failing_cli(main, capfd, caplog, ["--checkpoint", str(too_long), "--out", str(tmp_path / "e"),
                                                     "--int8"])
    assert rc == 2 and MESSAGE in text and "max_position_embeddings 128" in text


def test_archive_refuses_it(too_long, tmp_path):
    done = subprocess.run([str(ROOT / "archive.sh"), str(too_long), "toolong"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "MODEL_STORE": str(tmp_path)})
    assert done.returncode == 2 and MESSAGE in done.stderr and "128" in done.stderr
    assert not (tmp_path / "toolong.mar").exists()


@pytest.mark.parametrize("config, limit", [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "bert", "max_position_embeddings": 512, "position_embedding_type": "relative_key"}, None),
    ({"model_type": "bert"}, None),
])
def test_position_limit(config, limit):
    assert position_limit(config) == limit
