"""Reliability evidence for the served model: overload, a worker SIGKILL under load, a soak, hostile requests.

Usage: benchmarks/reliability.sh CKPT (or python -m benchmarks.reliability CKPT) [--soak-minutes 30] [--overload-users 256] [--overload-factor 4]
           [--normal-users 16] [--duration 60s] [--kill-after 10s] [--phases hostile,overload,kill,soak] [--out results/reliability-<ts>]
           [--record RELIABILITY.md] [--data data/snips/test.txt] [--model-config handlers/model-config.yaml]

CKPT is archived afresh (archive.sh, --model-config) into a private model store and served with the
repository's config.properties (only ports and model store changed) by a private TorchServe on 127.0.0.1
(serving/torchserve.py); every request stays on loopback and every run is bounded in time.
  hostile   each bad request of hostile_cases(), sent concurrently with good ones: its 4xx and message, the worker
            still the same process, the good ones answered, registration by URL refused, and a random
            marker sent as request text absent from every TorchServe log
  overload  locust, --duration each: --normal-users back to back (baseline); --overload-users paced to
            --overload-factor x the baseline's answers/s (overload); the same users back to back, a refused
            client retrying at once (storm); --normal-users again (recovery). Statuses, refusal bodies, max
            latency against responseTimeout, throughput after
  kill      locust at --normal-users; after --kill-after, SIGKILL of the worker (the Python child of the Java
            frontend running model_service_worker); seconds until a prediction answers 200 again, requests lost
  soak      on a fresh TorchServe, locust at half the baseline throughput for --soak-minutes; RSS of the
            frontend and the worker every --sample-every seconds; growth of the last 10% over the first 10%
            of the samples after --soak-warmup
Writes OUT/results.json, overload.png, kill.png, soak_memory.png, the locust records (OUT/<phase>/requests.csv)
and TorchServe's logs; then --record (RELIABILITY.md at the repository root; '' for none).
Exit code: 0 all targets met, 1 some target missed (see the report), 2 bad arguments or TorchServe failed.

The package, one concern a module:
  __main__.py     the command line and the order of the phases
  phases.py       the four phases and what each checks
  load.py         locust runs (locust_user.py is their user) and their Records: statuses, refusals, latencies
  logs.py         TorchServe's logs: copied out, searched for request text
  report.py       results.json -> plots and RELIABILITY.md
"""
