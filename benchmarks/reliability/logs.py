"""TorchServe's logs: copied out of a finished server, and searched for request text (which must never
be logged)."""
import time


def copy_logs(ts, dest, limit=20 * 2**20):
    """TorchServe's logs (the last `limit` bytes of each) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in [p for p in ts.log_dir.glob("*.log")] + [ts.work / "launcher.log"]:
        if path.is_file():
            with open(path, "rb") as src:
                src.seek(max(0, path.stat().st_size - limit))
                (dest / path.name).write_bytes(src.read())



def scan_logs(ts, marker, settle=2.0):
    """Files under TorchServe's log folder (and its console log) that contain `marker`."""
    time.sleep(settle)   # log4j appenders flush asynchronously
    paths = [p for p in ts.log_dir.rglob("*") if p.is_file()] + [ts.work / "launcher.log"]
    needle = marker.encode()
    return [str(p) for p in paths if p.is_file() and needle in p.read_bytes()]
