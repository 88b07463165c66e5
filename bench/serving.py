"""Serving benchmark: ``python -m bench.serving [--quick] [--output bench/serving.json]``.

Requests/s and p50/p99 latency of ``tlp serve`` (KServe's server over HTTP, Vertex AI's JSON
body with base64 images) for 1-image and 32-image requests, next to calling the same exported
SavedModel in-process with the same encoded images; plus 32 concurrent 1-image clients, which
the server batches. Full-size model: MobileNetV2, alpha 1.0, 160x160, random weights (timing
does not depend on the weights). Target: server throughput at 32 images per request >= 0.8x
in-process.

Each side runs in its own fresh process (this one imports no TensorFlow): a child builds the
model and the test images, a child times the in-process calls, and the server is ``python -m
tlp.components.lib.serving`` (what ``tlp serve`` runs) with this process as its HTTP client.

The drift watch's cost (target: p50 and p99 at 1 and 32 images per request within 5% of serving
without it): two servers on the same model, one watching with tlp serve's defaults (recomputing
every 1,000 images on the last 500) and one with ``--drift-every 0``, sent the same requests in
alternating blocks. Before each block of the plain server, the watching one's recomputation (if
one is running) is waited out, so every recomputation overlaps only the watching server's own
requests. The model's drift reference is 2,000 rows of the model's width (random: the values do
not change the cost).

``--cold-start IMAGE``: seconds from ``docker run IMAGE`` (the serving image) with the model
mounted to its health route answering 200, each run a new container (target: at most 6 s).

Also run by ``make bench`` (bench/run.py, benchmarks ``serving`` and ``serving_cold_start``).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tlp.components.lib.settings import ServeOptions

TARGET_RATIO = 0.8
DRIFT_TARGET = 1.05  # watching / plain, p50 and p99
COLD_START_TARGET = 6.0  # seconds
DRIFT = {"every": ServeOptions().drift_every, "window": ServeOptions().drift_window, "reference": 2000}
MODES = {
    "full": {"calls": {1: 200, 32: 30}, "concurrent_requests": 320, "rounds": 2,
             "drift_requests": {1: 3000, 32: 400}, "drift_block": {1: 20, 32: 4}, "cold_starts": 5},
    "quick": {"calls": {1: 40, 32: 8}, "concurrent_requests": 96, "rounds": 1,
              "drift_requests": {1: 300, 32: 30}, "drift_block": {1: 50, 32: 5}, "cold_starts": 2},
}
# 640 distinct photos: the drift watch counts a photo sent again once, so its cost is measured on
# requests that rotate through more photos than its window holds (the other measurements use the first 32).
MODEL = {"base": "MobileNetV2", "alpha": 1.0, "image_size": 160, "photo_size": (400, 300), "images": 640}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(latencies: list[float], images_per_call: int, wall: float, cpu: float | None = None) -> dict:
    images = len(latencies) * images_per_call
    return {
        "calls": len(latencies), "images_per_call": images_per_call,
        "calls_per_s": len(latencies) / wall, "images_per_s": images / wall,
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 0.99),
        "cpu_ms_per_image": None if cpu is None else 1000 * cpu / images,
    }


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (the server's own CPU, not the client's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- children (TensorFlow lives here) ---------------------------------------------------------


def child_build(work: str) -> dict:
    """The full-size servable model and realistic photos (400x300 JPEGs, resized by the model)."""
    import numpy as np
    import tensorflow as tf

    from tlp.components.lib import drift
    from tlp.components.lib import model as model_lib

    size = MODEL["image_size"]
    backbone = model_lib.build_backbone(MODEL["base"], MODEL["alpha"], size, "none")
    width = backbone.output.shape[-1]
    classifier = model_lib.build_model(backbone, 2, 0.2, [0.0] * width, [1.0] * width)
    export = os.path.join(work, "model")
    info = {"base": MODEL["base"], "alpha": MODEL["alpha"], "weights": "none", "image_size": size,
            "class_names": ["cats", "dogs"]}
    model_lib.export_servable(classifier, export, ["cats", "dogs"], size, info)
    rows = DRIFT["reference"]
    drift.save_reference(export, np.random.default_rng(3).normal(size=(rows, width)), [f"p{i}" for i in range(rows)])
    rng = np.random.default_rng(7)
    images = os.path.join(work, "images")
    os.makedirs(images, exist_ok=True)
    w, h = MODEL["photo_size"]
    for index in range(MODEL["images"]):
        # Smooth colour fields plus noise: JPEG sizes like photos', not like flat colours'.
        base = rng.uniform(0, 255, size=(3, 4, 3)).astype("float32")
        field = tf.image.resize(base[None], [h, w], method="bicubic")[0].numpy()
        pixels = np.clip(field + rng.normal(0, 12, size=field.shape), 0, 255).astype("uint8")
        with open(os.path.join(images, f"{index:03d}.jpg"), "wb") as handle:
            handle.write(tf.io.encode_jpeg(pixels, quality=90).numpy())
    return {"model_dir": export, "images_dir": images}


def _images(images_dir: str) -> list[bytes]:
    return [Path(images_dir, name).read_bytes() for name in sorted(os.listdir(images_dir))]


def child_inprocess(model_dir: str, images_dir: str, calls: dict) -> dict:
    """The exported signature called directly, as a Python program embedding the model would."""
    import tensorflow as tf

    from tlp.components.lib.model import load_servable

    serve = load_servable(model_dir)
    images = _images(images_dir)
    results = {}
    for per_call, count in calls.items():
        batch = tf.constant(images[:per_call])
        for _ in range(3):  # tracing and warm-up, untimed
            serve(image_bytes=batch)["probabilities"].numpy()
        latencies = []
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            begin = time.perf_counter()
            serve(image_bytes=batch)["probabilities"].numpy()
            latencies.append(time.perf_counter() - begin)
        results[str(per_call)] = summarize(latencies, per_call, time.perf_counter() - started,
                                           time.process_time() - cpu)
    return results


# --- the server side --------------------------------------------------------------------------


def _body(images: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(d).decode()}} for d in images]}).encode()


def _request(connection: http.client.HTTPConnection, path: str, body: bytes) -> float:
    begin = time.perf_counter()
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"server answered {response.status}: {payload[:200]!r}")
    return time.perf_counter() - begin


def measure_server(port: int, pid: int, images: list[bytes], calls: dict, concurrent_requests: int) -> dict:
    path = "/v1/models/model:predict"
    results = {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    for per_call, count in calls.items():
        body = _body(images[:per_call])  # encoded once: the client's JSON work is not the server's
        for _ in range(3):
            _request(connection, path, body)
        latencies = []
        started, cpu = time.perf_counter(), process_cpu_seconds(pid)
        for _ in range(count):
            latencies.append(_request(connection, path, body))
        results[str(per_call)] = summarize(latencies, per_call, time.perf_counter() - started,
                                           process_cpu_seconds(pid) - cpu)
    connection.close()

    clients = 32
    bodies = [_body([images[i % len(images)]]) for i in range(clients)]

    def client(index: int) -> list[float]:
        own = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        times = [_request(own, path, bodies[index]) for _ in range(concurrent_requests // clients)]
        own.close()
        return times

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [t for times in pool.map(client, range(clients)) for t in times]
    results["1x32 concurrent"] = summarize(latencies, 1, time.perf_counter() - started)
    return results


def _drift_state(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/drift", timeout=30) as response:
        return json.loads(response.read())


def measure_drift_cost(ports: dict, images: list[bytes], requests: dict, blocks: dict) -> dict:
    """p50/p99 of the watching and the plain server (``ports``: side -> port) on the same requests,
    in alternating blocks; the plain server's blocks start only once no recomputation runs."""
    path = "/v1/models/model:predict"
    results = {}
    for per_call, total in requests.items():
        # Both sides get the same requests, rotating through every photo: the window stays distinct.
        bodies = [_body(images[i:i + per_call]) for i in range(0, len(images) - per_call + 1, per_call)]
        connections = {side: http.client.HTTPConnection("127.0.0.1", port, timeout=300) for side, port in ports.items()}
        for connection in connections.values():
            for body in bodies[:3]:
                _request(connection, path, body)
        latencies: dict = {side: [] for side in ports}
        waited, computed_before = 0.0, _drift_state(ports["watching"])["computed"]
        for _ in range(total // blocks[per_call]):
            for side in ("watching", "plain"):
                if side == "plain":
                    begin = time.perf_counter()
                    # Nor while its worker computes features of queued images (the watch's second pass).
                    while (watch := _drift_state(ports["watching"]))["busy"] or watch.get("pending"):
                        time.sleep(0.01)
                    waited += time.perf_counter() - begin
                for _ in range(blocks[per_call]):
                    latencies[side].append(_request(connections[side], path,
                                                    bodies[len(latencies[side]) % len(bodies)]))
        state = _drift_state(ports["watching"])
        for connection in connections.values():
            connection.close()
        sides = {side: summarize(times, per_call, sum(times)) for side, times in latencies.items()}
        results[str(per_call)] = {
            **sides, "recomputations": state["computed"] - computed_before, "recompute_seconds": state["seconds"],
            "recompute_waited_for_idle_s": state["waited"], "recompute_distinct_images": state["distinct"],
            "waited_for_recomputation_s": waited, "dropped": state.get("dropped", 0),
            "p50_ratio": sides["watching"]["p50_ms"] / sides["plain"]["p50_ms"],
            "p99_ratio": sides["watching"]["p99_ms"] / sides["plain"]["p99_ms"],
        }
    return results


def run_drift_cost(built: dict, settings: dict, work: str) -> dict:
    from tlp.components.lib import serving

    ports = {"watching": serving.free_port(), "plain": serving.free_port()}
    flags = {"watching": ["--drift-every", str(DRIFT["every"]), "--drift-window", str(DRIFT["window"])],
             "plain": ["--drift-every", "0"]}
    with contextlib.ExitStack() as stack:
        for side, port in ports.items():
            command = [sys.executable, "-m", "tlp.components.lib.serving", built["model_dir"], "--port", str(port),
                       "--name", "model", "--max-batch", "32", *flags[side]]
            stack.enter_context(serving.server_process(command, f"http://127.0.0.1:{port}", "model",
                                                       os.path.join(work, f"server-{side}.log")))
        return measure_drift_cost(ports, _images(built["images_dir"]), settings["drift_requests"],
                                  settings["drift_block"])


def run_cold_start(image: str, model_dir: str, runs: int) -> dict:
    """Seconds from ``docker run`` to the health route's 200, each run a new container."""
    from tlp.components.lib import serving

    times = []
    for _ in range(runs):
        port = serving.free_port()
        started = time.perf_counter()
        container = subprocess.run(
            ["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", "-v", f"{model_dir}:/model:ro", image,
             "/model", "--host", "0.0.0.0"], capture_output=True, text=True, check=True).stdout.strip()
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):
                    pass
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"{image} was not healthy after 120 s")
                time.sleep(0.02)
            times.append(time.perf_counter() - started)
        finally:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    size = int(subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True,
                              text=True, check=True).stdout)
    return {"image": image, "seconds": times, "median_s": statistics.median(times), "image_bytes": size,
            "target_s": COLD_START_TARGET, "passed": statistics.median(times) <= COLD_START_TARGET}


def _run_child(function: str, work: str, **kwargs) -> dict:
    result_path = os.path.join(work, f"{function}.json")
    command = [sys.executable, "-m", "bench.serving", "--child", function, "--work", work,
               "--args", json.dumps(kwargs), "--result", result_path]
    with open(os.path.join(work, f"{function}.log"), "wb") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=1800,
                       cwd=Path(__file__).resolve().parent.parent)
    return json.loads(Path(result_path).read_text())


def run(mode: str = "full", work: str | None = None) -> dict:
    """The whole benchmark; returns its results (see ``fill_report`` for what they mean)."""
    from tlp.components.lib import serving

    settings = MODES[mode]
    work = work or tempfile.mkdtemp(prefix="tlp-bench-serving-")
    os.makedirs(work, exist_ok=True)
    built = _run_child("build", work)
    rounds = []
    # The sides take turns (in-process, server, in-process, server...): other load on the machine
    # then hits both alike; each side's best round counts.
    for _ in range(settings["rounds"]):
        inprocess = _run_child("inprocess", work, model_dir=built["model_dir"], images_dir=built["images_dir"],
                               calls=settings["calls"])
        port = serving.free_port()
        command = [sys.executable, "-m", "tlp.components.lib.serving", built["model_dir"], "--port", str(port),
                   "--name", "model", "--max-batch", "32"]
        with serving.server_process(command, f"http://127.0.0.1:{port}", "model",
                                    os.path.join(work, "server.log")) as process:
            server = measure_server(port, process.pid, _images(built["images_dir"]), settings["calls"],
                                    settings["concurrent_requests"])
        rounds.append({"inprocess": inprocess, "server": server, "load_average": os.getloadavg()[0]})

    def best(side: str) -> dict:
        return {key: max((r[side][key] for r in rounds), key=lambda m: m["images_per_s"])
                for key in rounds[0][side]}

    inprocess, server = best("inprocess"), best("server")
    ratio = server["32"]["images_per_s"] / inprocess["32"]["images_per_s"]
    cpu_ratio = inprocess["32"]["cpu_ms_per_image"] / server["32"]["cpu_ms_per_image"]
    drift_cost = run_drift_cost(built, settings, work)
    return {"mode": mode, "model": MODEL, "settings": settings, "inprocess": inprocess, "server": server,
            "throughput_ratio_32": ratio, "cpu_ratio_32": cpu_ratio, "target": TARGET_RATIO,
            "passed": ratio >= TARGET_RATIO, "drift": drift_cost, "rounds": rounds, "load_average": os.getloadavg(),
            "work": work, "model_dir": built["model_dir"]}


def rows(results: dict) -> list[tuple[str, float, str, str | None, bool | None]]:
    """(label, value, unit, target, passed) rows for a table or bench/run.py's report."""
    inp, srv = results["inprocess"], results["server"]
    out = []
    for size in ("1", "32"):
        out.append((f"in-process, {size} img/call: calls/s", inp[size]["calls_per_s"], "/s", None, None))
        out.append((f"in-process, {size} img/call: p50 / p99 latency",
                    f"{inp[size]['p50_ms']:.1f} / {inp[size]['p99_ms']:.1f} ms", "", None, None))
        out.append((f"tlp serve, {size} img/request: requests/s", srv[size]["calls_per_s"], "/s", None, None))
        out.append((f"tlp serve, {size} img/request: p50 / p99 latency",
                    f"{srv[size]['p50_ms']:.1f} / {srv[size]['p99_ms']:.1f} ms", "", None, None))
    ratio1 = srv["1"]["images_per_s"] / inp["1"]["images_per_s"]
    out.append(("throughput ratio, 1 img (server / in-process)", ratio1, "x", None, None))
    out.append(("throughput ratio, 32 img (server / in-process)", results["throughput_ratio_32"], "x",
                f">= {TARGET_RATIO}x", results["passed"]))
    out.append(("same in CPU per image (in-process / server process)", results["cpu_ratio_32"], "x",
                f">= {TARGET_RATIO}x", results["cpu_ratio_32"] >= TARGET_RATIO))
    concurrent = srv["1x32 concurrent"]
    out.append(("tlp serve, 32 concurrent 1-img clients (batched): img/s", concurrent["images_per_s"], "img/s",
                None, None))
    out.append(("  ... p50 / p99 latency", f"{concurrent['p50_ms']:.1f} / {concurrent['p99_ms']:.1f} ms", "",
                None, None))
    for size, cost in results.get("drift", {}).items():
        watching, plain = cost["watching"], cost["plain"]
        out.append((f"drift watch on / off, {size} img: p50", f"{watching['p50_ms']:.1f} / {plain['p50_ms']:.1f} ms",
                    "", None, None))
        out.append((f"drift watch on / off, {size} img: p99", f"{watching['p99_ms']:.1f} / {plain['p99_ms']:.1f} ms",
                    "", None, None))
        for q in ("p50", "p99"):
            ratio = cost[f"{q}_ratio"]
            out.append((f"  ... {q} on / off ({cost['recomputations']} recomputations, "
                        f"{cost['recompute_seconds']:.2f} s each)", ratio, "x", f"<= {DRIFT_TARGET}x",
                        ratio <= DRIFT_TARGET))
    return out


def cold_start_rows(result: dict) -> list[tuple[str, float, str, str | None, bool | None]]:
    return [
        (f"serving image size ({result['image']})", result["image_bytes"] / 1e9, "GB", "<= 1.2 GB",
         result["image_bytes"] <= 1.2e9),
        (f"docker run to healthy, median of {len(result['seconds'])}", result["median_s"], "s",
         f"<= {COLD_START_TARGET:g} s", result["passed"]),
    ]


def fill_report(report, results: dict) -> None:
    """Adds the rows to a bench/run.py ``Report``."""
    for label, value, unit, target, passed in rows(results):
        if target is None:
            report.measure(label, value, unit)
        else:
            report.check(label, value, unit, target, passed)
    report.notes.append("Full-size model (MobileNetV2, alpha 1.0, 160 px, random weights), 400x300 JPEG photos; "
                        "server: Vertex AI's JSON body with base64 images over HTTP keep-alive, one client; "
                        "in-process: the same SavedModel signature called directly on the same bytes. "
                        "The sides take turns; each side's best round counts. CPU: the server process's own "
                        "(not the client's).")
    report.details = results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (about 1 minute instead of 3)")
    parser.add_argument("--output", default="", help="also write the results as JSON")
    parser.add_argument("--workdir", default=None, help="keep the model, images and logs here")
    parser.add_argument("--cold-start", default="", metavar="IMAGE",
                        help="only time docker run IMAGE (the serving image) to healthy, on the benchmark's model")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kwargs = json.loads(args.args)
        if "calls" in kwargs:
            kwargs["calls"] = {int(k): v for k, v in kwargs["calls"].items()}
        result = child_build(args.work) if args.child == "build" else child_inprocess(**kwargs)
        Path(args.result).write_text(json.dumps(result))
        return 0
    started = time.monotonic()
    if args.cold_start:
        work = args.workdir or tempfile.mkdtemp(prefix="tlp-bench-serving-")
        os.makedirs(work, exist_ok=True)
        built = _run_child("build", work)
        result = run_cold_start(args.cold_start, built["model_dir"], MODES["quick" if args.quick else "full"]
                                ["cold_starts"])
        for label, value, unit, target, passed in cold_start_rows(result):
            print(f"  {label:<58} {value:>10.2f} {unit} {target or '':>10} {'PASS' if passed else 'FAIL'}")
        print("  runs: " + ", ".join(f"{t:.2f} s" for t in result["seconds"]))
        return 0
    results = run("quick" if args.quick else "full", args.workdir)
    results["wall_seconds"] = time.monotonic() - started
    print(f"\ntlp serving benchmark ({results['mode']}, {results['wall_seconds']:.0f} s, load average "
          f"{results['load_average'][0]:.1f})")
    for label, value, unit, target, passed in rows(results):
        shown = f"{value:,.2f} {unit}" if isinstance(value, float) else str(value)
        verdict = "" if passed is None else ("PASS" if passed else "FAIL")
        print(f"  {label:<58} {shown:>22} {target or '':>8} {verdict}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2, default=str))
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
