"""The storage layout KServe's TorchServe runtime serves: `config/config.properties` + `model-store/NAME.mar`.

    python -m serving.kserve CKPT NAME OUT [--mount /mnt/models]

Copy OUT to the storage an InferenceService points at (storageUri); the runtime mounts it at /mnt/models
and runs `torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`
behind KServe's wrapper, which answers the cluster on its own port and forwards v1 (`/v1/models/NAME:predict`)
and v2 (`/v2/models/NAME/infer`) requests to TorchServe.

The config is the repository's config.properties with what that runtime needs changed:
- The model is listed in `model_snapshot` (the wrapper reads the model names there), with the workers and
  batching of handlers/model-config.yaml.
- TorchServe still listens on 127.0.0.1 only: the wrapper runs in the same container and is the only client.
- Token authorization is off: the wrapper sends no key (it has no way to), and nothing outside the pod can
  reach the loopback ports.
- No service envelope. `enable_envvars_config=false` makes TorchServe ignore the runtime's
  TS_SERVICE_ENVELOPE: the handler reads v1 and v2 bodies itself, while TorchServe's envelopes answer only
  the first request of a batch.
"""
import argparse
import json
import sys
from pathlib import Path

from serving.torchserve import ROOT, TorchServeError, archive, write_config
from textclf.config import read_model_config


def snapshot(name, model_config):
    """model_snapshot for one model, with the workers and batching of its model-config.yaml."""
    mc = read_model_config(model_config)
    entry = {"defaultVersion": True, "marName": f"{name}.mar",
             "minWorkers": int(mc.get("minWorkers", 1)), "maxWorkers": int(mc.get("maxWorkers", 1)),
             "batchSize": int(mc.get("batchSize", 1)), "maxBatchDelay": int(mc.get("maxBatchDelay", 100)),
             "responseTimeout": int(mc.get("responseTimeout", 120))}
    return {"name": "startup.cfg", "modelCount": 1, "models": {name: {"1.0": entry}}}


def layout(checkpoint, name, out, mount="/mnt/models", model_config=ROOT / "handlers" / "model-config.yaml",
           ports=(8085, 8085, 8082, 7070, 7071)):
    """Write OUT/model-store/NAME.mar and OUT/config/config.properties (the repository's, with the settings
    above changed) for the storage mounted at `mount`; ports: inference, management, metrics, gRPC inference,
    gRPC management. -> OUT."""
    out = Path(out)
    (out / "config").mkdir(parents=True, exist_ok=True)
    archive(checkpoint, name, out / "model-store", model_config)
    inference, management, metrics, grpc_inference, grpc_management = ports
    write_config(out / "config" / "config.properties", f"{mount}/model-store", {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "model_snapshot": json.dumps(snapshot(name, model_config), separators=(",", ":")),
        "disable_token_authorization": "true",
        "enable_envvars_config": "false",
    })
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("name", help="the model name: the URL segment of /v1/models/NAME and /v2/models/NAME")
    p.add_argument("out", type=Path)
    p.add_argument("--mount", default="/mnt/models", help="where the runtime mounts the storage")
    p.add_argument("--model-config", type=Path, default=ROOT / "handlers" / "model-config.yaml")
    args = p.parse_args(argv)
    try:
        out = layout(args.checkpoint, args.name, args.out, args.mount, args.model_config)
    except TorchServeError as e:
        print(f"serving.kserve: {e}", file=sys.stderr)
        return 2
    print(f"{out}/config/config.properties\n{out}/model-store/{args.name}.mar")
    return 0


if __name__ == "__main__":
    sys.exit(main())
