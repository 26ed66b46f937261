"""Serving benchmark: the same ONNX model behind plain FastAPI + uvicorn and behind rayml's Serve app.

Three stacks in one run, each driven by wrk (benchmarks/serve_post.lua) with one JSON body holding one instance,
at several concurrencies; each point is a warm-up run (discarded) then ``--repeats`` timed runs, and the medians
of requests/s, p50 and p99 are reported with the ratios rayml/baseline:

1. baseline: one uvicorn worker (a subprocess) with a FastAPI app whose ``POST /predict/{model}`` does the same
   work per request as rayml's replica: parse ``{"instances": [...]}``, ``Predictor.records_table`` (validation
   and typing), ``Predictor.predict_table`` (ONNX Runtime, 1 thread), and the same JSON answer.
2. ray-default: a ``ray start --head --block --num-cpus=4`` cluster (Serve's default Python proxy),
   ``rayml.serve.start(rayml.serve.args_for_model_dir(version_dir))``.
3. ray-haproxy: the same with ``RAY_SERVE_ENABLE_HA_PROXY=1`` in the cluster's (and driver's) environment; then
   the single-row batching comparison at one concurrency: max_batch_size=1 (and max_request_rows=1) against the
   default 256, once with the default admission limit that follows from it (max_ongoing_requests = 2 x batch)
   and once with max_ongoing_requests=512 as in the default config, so only batching differs.

Each Ray stack runs in a child process of this script (a fresh driver per cluster); the baseline runs with no Ray
cluster up. Usage (from the repository root, venv active):

    python benchmarks/serve.py                       # builds a model under --workdir if there is none
    python benchmarks/serve.py --model-dir /path/registry/fraud/1 --duration 8 --repeats 3
    # the heavier model: the MNIST CNN (one base64 PNG per request, decoded and normalized in the replica),
    # dynamic batching against batching off, behind HAProxy
    python benchmarks/serve.py --model mnist --workdir /tmp/rayml-bench-serve-cnn --stacks ray-haproxy \
        --concurrency 32 --batch-variants batch1-ongoing512

Needs `wrk` on PATH (Debian: apt-get install -y wrk). Everything binds to 127.0.0.1.
"""

import os

# Ray 2.60 turns on token auth for clusters made by `ray start`; the driver must know before Ray is imported.
os.environ["RAY_AUTH_MODE"] = "token"

import argparse
import base64
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LUA = Path(__file__).resolve().with_name("serve_post.lua")
VENV_BIN = Path(sys.executable).parent
HA_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
STACKS = ("baseline", "ray-default", "ray-haproxy")

# One transaction, as a client would send it; trimmed to the model's input schema before use.
RECORD = {
    "transaction_id": "t-bench-000001",
    "user_id": "u-000042",
    "event_time": "2026-01-15T12:34:56+00:00",
    "amount": 123.45,
    "merchant_category": "electronics",
    "country": "US",
    "channel": "online",
    "device": "web",
    "user_txn_count_24h": 3,
    "user_avg_amount_30d": 80.5,
    "seconds_since_last_txn": 3600.0,
    "distance_from_home_km": 12.3,
}

# Batching variants measured against HAProxy (name -> serve overrides). "default" is the main measurement.
BATCH_VARIANTS = {
    "batch1": ["max_batch_size=1", "max_request_rows=1"],
    "batch1-ongoing512": ["max_batch_size=1", "max_request_rows=1", "max_ongoing_requests=512"],
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_tmpdir(work: Path) -> Path:
    """A Ray temp root private to this benchmark (RAY_TMPDIR). `ray start` records its cluster in
    <root>/ray/ray_current_cluster and terminating `ray start --block` leaves that file behind; a later embedded
    ``ray.init()`` then tries to join the dead cluster (and rayml's ``ray.init(num_cpus=...)`` fails). Keeping
    Ray's files here means the benchmark neither trips over nor leaves such a file in /tmp/ray."""
    return work / "rt"


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


# ---------------------------------------------------------------------------------------------- the model

# The models --model builds: the data command, the job and its overrides (kept short: serving speed is measured).
MODELS = {
    "fraud": (["generate", "fraud", "--rows", "20000"], "jobs/fraud_detection.yaml", ["train.epochs=2"]),
    "mnist": (["datasets", "mnist"], "jobs/mnist_cnn.yaml", ["train.epochs=2"]),
}


def ensure_model(args: argparse.Namespace) -> Path:
    """The version directory to serve: --model-dir, or the --model one built (once) under --workdir."""
    from rayml import artifacts

    if args.model_dir:
        return artifacts.resolve_version_dir(args.model_dir).resolve()
    work = Path(args.workdir).resolve()
    data_command, job, overrides = MODELS[args.model]
    model = work / "registry" / ("fraud" if args.model == "fraud" else "mnist")
    if artifacts.versions(model):
        log(f"reusing the model at {model}")
        return artifacts.resolve_version_dir(model).resolve()
    # A plain user's command line: embedded local Ray, no token mode, no cluster address.
    env = child_env()
    env.pop("RAY_AUTH_MODE", None)
    python = str(VENV_BIN / "python")
    started = time.monotonic()
    data = work / f"data-{args.model}"
    if not data.exists():
        log(f"writing the {args.model} data: rayml {' '.join(data_command)}")
        subprocess.run([python, "-m", "rayml", *data_command, "--out", str(data)],
                       cwd=REPO, env=env, check=True, timeout=600)
    log(f"training and registering the model (rayml run {job} {' '.join(overrides)})")
    subprocess.run(
        [python, "-m", "rayml", "run", job, f"source.path={data}", f"run.root={work / 'runs'}",
         f"registry.root={work / 'registry'}", *overrides],
        cwd=REPO, env=env, check=True, timeout=900,
    )
    log(f"model built in {time.monotonic() - started:.0f} s")
    return artifacts.resolve_version_dir(model).resolve()


def request_body(version_dir: Path, rows: int = 1) -> dict[str, Any]:
    """``{"instances": [...]}`` with ``rows`` copies of one record, checked by the model's own Predictor: RECORD
    for a tabular model, one 28x28 MNIST digit as a base64 PNG for a model with an image (binary) column."""
    from rayml.predictor import Predictor

    predictor = Predictor(version_dir)
    names = [c.name for c in predictor.columns]
    if any(c.type == "binary" for c in predictor.columns):
        from rayml.datasets import packaged

        digits = Path(os.environ.get("TMPDIR", "/tmp")) / "rayml-bench-digit"
        if not digits.exists():
            packaged.write("mnist", digits, limit=20)
        png = sorted(digits.rglob("*.png"))[0]
        record = {"path": png.name, "image": base64.b64encode(png.read_bytes()).decode()}
    else:
        record = {n: RECORD[n] for n in names if n in RECORD}
    missing = [n for n in names if n not in record]
    if missing:
        raise SystemExit(f"the benchmark record lacks the model's input column(s) {missing}; extend RECORD")
    record = {n: record[n] for n in names}
    predictor.records_table([record])  # raises if the record does not validate
    return {"instances": [record] * rows}


# ---------------------------------------------------------------------------------------------- baseline

def baseline_server(version_dir: str, port: int) -> None:
    """Plain FastAPI + uvicorn (one worker) + onnxruntime: the same per-request work as rayml's replica."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from rayml.errors import RequestError
    from rayml.predictor import Predictor

    # As in a rayml replica with num_cpus=1: one ORT thread, no spinning, 256 rows per request at most.
    predictor = Predictor(version_dir, threads=1, max_batch_rows=256, spinning=False)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def predict(model: str, request: Request) -> dict[str, Any]:
        body = await request.body()
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"body is not valid JSON ({exc})") from exc
        if not isinstance(payload, dict) or "instances" not in payload:
            raise RequestError('body must be a JSON object with "instances": [{"column": value, ...}]')
        table = predictor.records_table(payload["instances"])
        outputs = predictor.predict_table(table)
        answer = {"model_name": model, "model_version": predictor.version}
        if predictor.threshold is not None:
            answer["threshold"] = predictor.threshold
        return {**answer, "predictions": predictor.answers(outputs)}

    # Registered explicitly: this module does not use postponed annotations, but keep FastAPI's view obvious.
    app.add_api_route("/predict/{model}", predict, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------- load

def post(url: str, body: dict[str, Any], timeout: float = 10.0) -> tuple[int, Any]:
    import httpx

    response = httpx.post(url, json=body, timeout=timeout)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def wait_ready(url: str, body: dict[str, Any], deadline_s: float, want: int = 200, streak: int = 3) -> Any:
    """POST until ``want`` comes back ``streak`` times in a row; return the last answer."""
    import httpx

    deadline = time.monotonic() + deadline_s
    seen, last = 0, None
    while time.monotonic() < deadline:
        try:
            status, answer = post(url, body, timeout=5)
            last = (status, answer)
            seen = seen + 1 if status == want else 0
            if seen >= streak:
                return answer
        except httpx.HTTPError as exc:
            last, seen = repr(exc), 0
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer {want} within {deadline_s:.0f} s; last: {str(last)[:500]}")


def wrk(url: str, body_file: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    threads = min(concurrency, 2)
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "5s", "--latency",
           "-s", str(LUA), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                          env={**os.environ, "RAYML_BENCH_BODY": str(body_file)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
    result = json.loads(lines[-1][len("WRK_JSON "):])
    seconds_run = result["duration_us"] / 1e6
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    result["ok_rps"] = (result["requests"] - result["status"]) / seconds_run
    return result


def load_point(url: str, body_file: Path, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up (discarded), then ``repeats`` timed wrk runs; medians and the error counts of the timed runs."""
    warm = wrk(url, body_file, concurrency, args.warmup)
    runs = [wrk(url, body_file, concurrency, args.duration) for _ in range(args.repeats)]
    point = {
        "concurrency": concurrency,
        "rps": statistics.median(r["ok_rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
        "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
        "requests": sum(r["requests"] for r in runs),
        "non2xx": sum(r["status"] for r in runs),
        "socket_errors": sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in runs),
        "warmup_errors": warm["errors"],
        "runs": runs,
    }
    per_run = ", ".join(f"{r['ok_rps']:.0f}" for r in runs)
    log(f"  c={concurrency:<3} {point['rps']:8.1f} req/s  p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms"
        f"  (runs: {per_run} req/s; non-2xx {point['non2xx']}, "
        f"socket errors {point['socket_errors']}, warm-up errors {point['warmup_errors']})")
    return point


def haproxy_running() -> bool:
    """Whether any haproxy process is up (read from /proc; nothing is signalled)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"haproxy" in (proc / "cmdline").read_bytes().split(b"\0")[0]:
                    return True
            except OSError:
                continue
    return False


# ---------------------------------------------------------------------------------------------- stacks

def run_baseline(version_dir: Path, model: str, body: dict, body_file: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--_baseline-server", "--model-dir", str(version_dir),
         "--_port", str(port)], env=child_env(), cwd=REPO,
    )
    try:
        url = f"http://127.0.0.1:{port}/predict/{model}"
        answer = wait_ready(url, body, 60)
        log(f"baseline (pid {server.pid}) answers: {json.dumps(answer)}")
        points = [load_point(url, body_file, c, args) for c in args.concurrency]
        return {"stack": "baseline", "answer": answer, "points": points}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_ray_stack(stack: str, version_dir: Path, model: str, body: dict, body_file: Path,
                  args: argparse.Namespace) -> dict:
    """One Ray cluster (child of this process), rayml's app on it, the load points; everything stopped after."""
    haproxy = stack == "ray-haproxy"
    if haproxy:
        os.environ[HA_ENV] = "1"  # build_app reads it in the driver; the controller reads it in the cluster
    else:
        os.environ.pop(HA_ENV, None)
    import ray
    from ray import serve

    import rayml.serve

    gcs, dashboard, metrics, serve_port = (free_port() for _ in range(4))
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / f"{stack}-ray-start.log"
    ray_log = open(log_path, "w")
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--num-cpus=4", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--metrics-export-port={metrics}", "--include-dashboard=true"],
        env=child_env(), stdout=ray_log, stderr=subprocess.STDOUT,
    )
    result: dict[str, Any] = {"stack": stack, "points": [], "batching": {}}
    try:
        started = time.monotonic()
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() - started > 180:
                raise RuntimeError(f"ray start did not come up: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        log(f"{stack}: ray start (pid {head.pid}) up in {time.monotonic() - started:.0f} s")
        ray.init(address=f"127.0.0.1:{gcs}", log_to_driver=False)
        serve_args = rayml.serve.args_for_model_dir(str(version_dir))
        started = time.monotonic()
        base = rayml.serve.start(serve_args, port=serve_port)
        url = f"{base}/predict/{model}"
        answer = wait_ready(url, body, 120)
        result["answer"] = answer
        result["haproxy_process"] = haproxy_running()
        log(f"{stack}: deployed in {time.monotonic() - started:.0f} s; haproxy process up: "
            f"{result['haproxy_process']}; answers: {json.dumps(answer)}")
        result["points"] = [load_point(url, body_file, c, args) for c in args.concurrency]
        if haproxy and args.batch_variants:
            two_rows = {"instances": body["instances"] * 2}
            for name in args.batch_variants:
                started = time.monotonic()
                rayml.serve.start(serve_args, port=serve_port, overrides=BATCH_VARIANTS[name])
                # max_request_rows=1 is live once a 2-row request gets 413 every time (no old replica answers).
                wait_ready(url, two_rows, 120, want=413, streak=5)
                wait_ready(url, body, 30)
                log(f"{stack}: {name} {BATCH_VARIANTS[name]} live in {time.monotonic() - started:.0f} s")
                result["batching"][name] = load_point(url, body_file, args.batch_concurrency, args)
        return result
    finally:
        try:
            serve.shutdown()
        except Exception as exc:  # noqa: BLE001 - keep tearing down
            log(f"serve.shutdown: {exc!r}")
        ray.shutdown()
        head.terminate()  # `ray start --block` stops what it started when terminated
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            log(f"ray start (pid {head.pid}) did not stop in 90 s; killing it")
            head.kill()
            head.wait()
        ray_log.close()
        # Our own cluster's address file (see ray_tmpdir); the cluster it names is gone.
        (ray_tmpdir(work) / "ray" / "ray_current_cluster").unlink(missing_ok=True)
        log(f"{stack}: cluster stopped; haproxy process still up: {haproxy_running()}")


# ---------------------------------------------------------------------------------------------- report

def table(results: dict[str, dict], concurrency: list[int]) -> str:
    base = {p["concurrency"]: p for p in results.get("baseline", {}).get("points", [])}
    lines = [
        "| stack | conc. | req/s | p50 ms | p99 ms | req/s vs baseline | p99 vs baseline | requests | non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stack in STACKS:
        for point in results.get(stack, {}).get("points", []):
            b = base.get(point["concurrency"])
            rps_ratio = f"{point['rps'] / b['rps']:.2f}x" if b and stack != "baseline" else ""
            p99_ratio = f"{point['p99_ms'] / b['p99_ms']:.2f}x" if b and stack != "baseline" else ""
            lines.append(
                f"| {stack} | {point['concurrency']} | {point['rps']:.1f} | {point['p50_ms']:.2f} | "
                f"{point['p99_ms']:.2f} | {rps_ratio} | {p99_ratio} | {point['requests']} | {point['non2xx']} | "
                f"{point['socket_errors']} |"
            )
    return "\n".join(lines)


def batching_table(results: dict[str, dict], conc: int) -> str:
    hap = results.get("ray-haproxy", {})
    rows = [("default (max_batch_size=256, max_ongoing_requests=512)",
             next((p for p in hap.get("points", []) if p["concurrency"] == conc), None))]
    rows += [(f"{name}: {', '.join(BATCH_VARIANTS[name])}", point) for name, point in hap.get("batching", {}).items()]
    lines = ["| HAProxy, concurrency %d | req/s | p50 ms | p99 ms | requests | non-2xx | socket errors |" % conc,
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, p in rows:
        if p is not None:
            lines.append(f"| {name} | {p['rps']:.1f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['requests']} | "
                         f"{p['non2xx']} | {p['socket_errors']} |")
    return "\n".join(lines)


def verdicts(results: dict[str, dict], conc: int = 32) -> list[str]:
    base = next((p for p in results.get("baseline", {}).get("points", []) if p["concurrency"] == conc), None)
    out = []
    for stack in STACKS[1:]:
        point = next((p for p in results.get(stack, {}).get("points", []) if p["concurrency"] == conc), None)
        if base is None or point is None:
            continue
        rps, p99 = point["rps"] / base["rps"], point["p99_ms"] / base["p99_ms"]
        out.append(f"{stack} at c={conc}: req/s {rps:.2f}x baseline (target >= 0.75x: "
                   f"{'met' if rps >= 0.75 else 'NOT met'}), p99 {p99:.2f}x baseline (target <= 2x: "
                   f"{'met' if p99 <= 2.0 else 'NOT met'})")
    return out


# ---------------------------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", help="<registry>/<model>[/<version>]; default: build one under --workdir")
    parser.add_argument("--model", choices=sorted(MODELS), default="fraud",
                        help="the model built when --model-dir is not given: the fraud MLP or the MNIST CNN")
    parser.add_argument("--workdir", default="/tmp/rayml-bench-serve", help="model, logs and results.json")
    parser.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated subset of {STACKS}")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per timed wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded load before each point")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-concurrency", type=int, default=32)
    parser.add_argument("--batch-variants", default=",".join(BATCH_VARIANTS),
                        help=f"comma-separated subset of {list(BATCH_VARIANTS)}, or '' for none")
    parser.add_argument("--_baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_ray-stack", help=argparse.SUPPRESS)
    parser.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.stacks = [s for s in args.stacks.split(",") if s]
    args.batch_variants = [v for v in args.batch_variants.split(",") if v]
    unknown = [s for s in args.stacks if s not in STACKS] + [v for v in args.batch_variants if v not in BATCH_VARIANTS]
    if unknown:
        parser.error(f"unknown stack(s)/variant(s): {unknown}")
    return args


def main() -> int:
    args = parse_args()
    if args._baseline_server:
        baseline_server(args.model_dir, args._port)
        return 0
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(ray_tmpdir(work))  # for this process and every child it starts
    ray_tmpdir(work).mkdir(exist_ok=True)
    if args._ray_stack:  # a child: one Ray cluster's measurements into --_out
        version_dir = Path(args.model_dir)
        body = json.loads((work / "body.json").read_text())
        model = json.loads((version_dir / "manifest.json").read_text())["model_name"]
        result = run_ray_stack(args._ray_stack, version_dir, model, body, work / "body.json", args)
        Path(args._out).write_text(json.dumps(result, indent=1))
        return 0

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install -y wrk)")
    version_dir = ensure_model(args)
    bench_started = time.monotonic()
    body = request_body(version_dir)
    body_file = work / "body.json"
    body_file.write_text(json.dumps(body))
    model = json.loads((version_dir / "manifest.json").read_text())["model_name"]
    log(f"serving {version_dir} as /predict/{model}; body {body_file.stat().st_size} bytes; "
        f"{args.repeats} x {args.duration:g} s per point after {args.warmup:g} s warm-up; "
        f"concurrency {args.concurrency}; stacks {args.stacks}")

    results: dict[str, dict] = {}
    for stack in args.stacks:
        log(f"== {stack}")
        started = time.monotonic()
        if stack == "baseline":
            results[stack] = run_baseline(version_dir, model, body, body_file, args)
        else:
            out = work / f"{stack}.json"
            out.unlink(missing_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_ray-stack", stack, "--model-dir",
                   str(version_dir), "--workdir", str(work), "--_out", str(out),
                   "--concurrency", ",".join(map(str, args.concurrency)), "--duration", str(args.duration),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                   "--batch-concurrency", str(args.batch_concurrency),
                   "--batch-variants", ",".join(args.batch_variants)]
            child = subprocess.Popen(cmd, env=child_env(), cwd=REPO)
            try:
                child.wait(timeout=900)
            except subprocess.TimeoutExpired:
                log(f"{stack} child (pid {child.pid}) ran past 900 s; interrupting it so it tears its cluster down")
                child.send_signal(signal.SIGINT)
                child.wait(timeout=120)
            if child.returncode != 0 or not out.is_file():
                log(f"{stack} failed (exit {child.returncode}); see {work}/{stack}-ray-start.log")
                continue
            results[stack] = json.loads(out.read_text())
        results[stack]["wall_s"] = round(time.monotonic() - started, 1)
        log(f"{stack} took {results[stack]['wall_s']:.0f} s")

    scores = {s: r.get("answer", {}).get("predictions") for s, r in results.items()}
    summary = {
        "machine": {"nproc": os.cpu_count(), "cpu": _cpu_model()},
        "settings": {k: getattr(args, k) for k in ("concurrency", "duration", "warmup", "repeats",
                                                     "batch_concurrency", "batch_variants")},
        "model_dir": str(version_dir),
        "wall_s_excluding_model_build": round(time.monotonic() - bench_started, 1),
        "results": results,
    }
    (work / "results.json").write_text(json.dumps(summary, indent=1))
    print()
    print(table(results, args.concurrency))
    print()
    if "ray-haproxy" in results and results["ray-haproxy"].get("batching"):
        print(batching_table(results, args.batch_concurrency))
        print()
    for line in verdicts(results):
        print(line)
    print(f"same predictions from every stack: {len({json.dumps(v) for v in scores.values()}) == 1} {scores}")
    print(f"benchmark wall time (excluding the model build): {summary['wall_s_excluding_model_build']:.0f} s; "
          f"raw results: {work / 'results.json'}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
