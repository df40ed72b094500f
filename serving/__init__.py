"""Running TorchServe for this project's tests and benchmarks: a private instance on free loopback ports,
archived with ./archive.sh, started, waited for and always stopped (serving.torchserve)."""
