"""Driver of bench/pull: lucidd's registry pull against curl, from one registry on loopback;
then pulls from peers (one seeder against curl; three rate-capped seeders against one).
Standard library only. Reports ratios of throughput, never absolute times as results."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

LUCIDD = os.environ["LUCIDD_BIN"]
LLAMA = os.environ["LLAMA_SERVER_BINARY"]
MODEL = os.environ["MODEL"]
RUNS = int(os.environ.get("PULL_RUNS", "5"))


def wait_for(what, ready, timeout=60):
    deadline = time.time() + timeout
    while True:
        value = ready()
        if value:
            return value
        if time.time() > deadline:
            raise SystemExit(f"{what} did not happen in {timeout} s")
        time.sleep(0.02)


def start_registry(work):
    config = os.path.join(work, "registry.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\n"
                "http:\n  addr: 127.0.0.1:0\n  secret: bench\n")
    log = os.path.join(work, "registry.log")
    # info level for the one line that gives the address.
    with open(config) as f:
        text = f.read().replace("level: error", "level: info")
    with open(config, "w") as f:
        f.write(text)
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    addr = wait_for("the registry", lambda: (re.findall(r"listening on ([0-9.:]+)", open(log).read()) or [None])[0])
    return proc, f"http://{addr}"


def request(method, url, data=None, headers=None):
    r = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(r)


def push(base, repository, tag, data):
    def blob(bytes_):
        digest = "sha256:" + hashlib.sha256(bytes_).hexdigest()
        location = request("POST", f"{base}/v2/{repository}/blobs/uploads/").headers["Location"]
        location = base + location if location.startswith("/") else location
        sep = "&" if "?" in location else "?"
        request("PUT", f"{location}{sep}digest={digest}", bytes_, {"Content-Type": "application/octet-stream"})
        return {"digest": digest, "size": len(bytes_)}
    config = blob(json.dumps({"model_format": "gguf"}).encode())
    model = blob(data)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.ollama.image.model", **model}]}
    request("PUT", f"{base}/v2/{repository}/manifests/{tag}", json.dumps(manifest).encode(),
            {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    return model


def start_lucidd(work, registry):
    data = os.path.join(work, "lucidd")
    os.makedirs(os.path.join(data, "gguf"), exist_ok=True)
    addr_file = os.path.join(data, "addr")
    proc = subprocess.Popen(
        [LUCIDD, "--listen", "127.0.0.1:0", "--no-p2p", "--data-dir", data, "--addr-file", addr_file,
         "--worker", "llama-cpp", "--model-dir", os.path.join(data, "gguf"), "--no-ollama-models",
         "--llama-server-binary", LLAMA, "--registry", registry],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "lucidd.log"), "w"))
    addr = wait_for("lucidd", lambda: os.path.exists(addr_file) and open(addr_file).read().strip())
    return proc, f"http://{addr}"


def start_node(work, name, extra, seed=False):
    """A lucidd with p2p on loopback; `seed` puts the model in its model directory."""
    data = os.path.join(work, name)
    gguf = os.path.join(data, "gguf")
    os.makedirs(gguf, exist_ok=True)
    if seed:
        os.symlink(MODEL, os.path.join(gguf, "gemma3.gguf"))
    addr_file = os.path.join(data, "addr")
    log = os.path.join(data, "log")
    proc = subprocess.Popen(
        [LUCIDD, "--listen", "127.0.0.1:0", "--no-mdns", "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
         "--data-dir", data, "--addr-file", addr_file, "--worker", "llama-cpp", "--model-dir", gguf,
         "--no-ollama-models", "--llama-server-binary", LLAMA, *extra],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"), env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"})
    http = "http://" + wait_for(name, lambda: os.path.exists(addr_file) and open(addr_file).read().strip())
    network = lambda: json.load(request("GET", f"{http}/api/phase/network"))
    addrs = wait_for(f"{name}'s p2p listener", lambda: [a for a in network().get("listen_addrs", []) if "/tcp/" in a])
    peer_id = subprocess.run([LUCIDD, "id", "--data-dir", data], check=True, capture_output=True, text=True).stdout.strip()
    return {"proc": proc, "http": http, "addr": addrs[0], "peer_id": peer_id, "log": log, "data": data}


def post(http, path, body):
    return json.load(request("POST", f"{http}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}))


def peer_pull(node):
    """Pulls gemma3 from peers, then deletes it; the number of sources the log names."""
    answer = post(node["http"], "/api/pull", {"model": "gemma3", "stream": False})
    assert answer.get("status") == "success", answer
    request("DELETE", f"{node['http']}/api/delete", json.dumps({"model": "gemma3"}).encode(),
            {"Content-Type": "application/json"})
    lines = [l for l in open(node["log"]) if "pulled a model file from peers" in l]
    # `sources={PeerId("12D3…"): bytes, …}`: one entry per peer that sent bytes.
    return lines[-1].split("sources=", 1)[-1].count("12D3") if lines else 0


def bench_peers(work, share_rate):
    """Seconds of the best pull from one seeder, and from three, each capped at `share_rate`
    (None: no cap); and how many sources the three-seeder pulls used."""
    cap = ["--share-rate", share_rate] if share_rate else []
    nodes = []
    try:
        a = start_node(work, f"seed-a-{share_rate}", cap, seed=True)
        nodes.append(a)
        published = post(a["http"], "/api/phase/publish", {"model": "gemma3"})
        assert "error" not in published, published
        with open(os.path.join(work, "trust.toml"), "w") as f:
            f.write(f'trusted_publishers = ["{a["peer_id"]}"]\n')

        def puller(name):
            os.makedirs(os.path.join(work, name), exist_ok=True)
            shutil.copy(os.path.join(work, "trust.toml"), os.path.join(work, name, "policy.toml"))
            node = start_node(work, name, ["--bootstrap-peer", a["addr"]])
            nodes.append(node)
            return node

        one = puller(f"pull-one-{share_rate}")
        peer_pull(one)  # warm: the DHT lookup, the page cache
        alone = [timed(lambda: peer_pull(one)) for _ in range(RUNS)]
        for name in ("seed-b", "seed-c"):
            nodes.append(start_node(work, f"{name}-{share_rate}", cap + ["--bootstrap-peer", a["addr"]], seed=True))
        three = puller(f"pull-three-{share_rate}")
        # Until the pull finds all three seeders (each announces its file once it is up).
        wait_for("a pull from three seeders", lambda: peer_pull(three) >= 3, timeout=120)
        sources = []
        together = []
        for _ in range(RUNS):
            together.append(timed(lambda: sources.append(peer_pull(three))))
        return min(alone), min(together), sources
    finally:
        for node in nodes:
            node["proc"].terminate()
            node["proc"].wait()


def bench_slow_peer(work):
    """Seconds of the best pull from a fast seeder beside one that sends 512 KiB/s: at the end
    of a pull an idle peer races the slow one's pieces, so it should cost next to nothing."""
    nodes = []
    try:
        a = start_node(work, "fast", [], seed=True)
        nodes.append(a)
        post(a["http"], "/api/phase/publish", {"model": "gemma3"})
        slow = start_node(work, "slow", ["--share-rate", "512K", "--bootstrap-peer", a["addr"]], seed=True)
        nodes.append(slow)
        os.makedirs(os.path.join(work, "pull-slow"), exist_ok=True)
        with open(os.path.join(work, "pull-slow", "policy.toml"), "w") as f:
            f.write(f'trusted_publishers = ["{a["peer_id"]}"]\n')
        b = start_node(work, "pull-slow", ["--bootstrap-peer", a["addr"]])
        nodes.append(b)
        # Until a pull meets the slow seeder (then B is connected to it).
        network = lambda: json.dumps(json.load(request("GET", f"{b['http']}/api/phase/network")))
        wait_for("a pull that meets the slow seeder", lambda: peer_pull(b) >= 1 and slow["peer_id"] in network(), timeout=120)
        return min(timed(lambda: peer_pull(b)) for _ in range(RUNS))
    finally:
        for node in nodes:
            node["proc"].terminate()
            node["proc"].wait()


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    work = tempfile.mkdtemp(prefix="bench-pull-")
    registry, base = start_registry(work)
    lucidd = None
    try:
        with open(MODEL, "rb") as f:
            data = f.read()
        layer = push(base, "library/gemma3", "270m", data)
        lucidd, http = start_lucidd(work, base)
        blob_url = f"{base}/v2/library/gemma3/blobs/{layer['digest']}"
        target = os.path.join(work, "curl.out")

        def curl():
            subprocess.run(["curl", "-sSf", "-o", target, blob_url], check=True)

        def curl_and_hash():
            curl()
            subprocess.run(["sha256sum", target], check=True, stdout=subprocess.DEVNULL)

        def pull():
            body = json.dumps({"model": "gemma3:270m", "stream": False}).encode()
            answer = json.load(request("POST", f"{http}/api/pull", body, {"Content-Type": "application/json"}))
            assert answer.get("status") == "success", answer
            delete = json.dumps({"model": "gemma3:270m"}).encode()
            request("DELETE", f"{http}/api/delete", delete, {"Content-Type": "application/json"})

        # Alternating, so both see the same page cache and machine state.
        times = {"curl": [], "curl + sha256sum": [], "lucidd pull": []}
        for _ in range(RUNS):
            times["curl"].append(timed(curl))
            times["curl + sha256sum"].append(timed(curl_and_hash))
            times["lucidd pull"].append(timed(pull))
        best = {name: min(t) for name, t in times.items()}
        size = len(data)
        print(f"\n## bench/pull (Gemma 3 270M GGUF, {size / 2**20:.0f} MiB, from docker-registry on loopback; best of {RUNS})\n")
        print("| download | throughput vs curl |")
        print("|---|---|")
        for name, t in best.items():
            print(f"| {name} | {best['curl'] / t:.2f} |")
        print(f"\nlucidd pull / (curl + sha256sum): {best['curl + sha256sum'] / best['lucidd pull']:.2f}")
        print("(lucidd pull includes the manifest, the digest check, the manifest write and waiting until the model is served)")

        # From peers: one seeder unlimited against curl; then seeders capped at a third of
        # a rate, one against three.
        alone, _, _ = bench_peers(work, None)
        print(f"\n## bench/pull from peers (/phase/blob/1 over TCP on loopback, 4 MiB pieces each checked; best of {RUNS})\n")
        print("| download | ratio | goal |")
        print("|---|---|---|")
        print(f"| one peer, throughput vs curl | {best['curl'] / alone:.2f} | >= 0.9 |")
        # curl neither hashes nor decrypts; these two baselines verify what they fetch.
        print(f"| one peer vs curl + sha256sum | {best['curl + sha256sum'] / alone:.2f} | |")
        print(f"| one peer vs lucidd's registry pull | {best['lucidd pull'] / alone:.2f} | |")
        rate = os.environ.get("PULL_SHARE_RATE", "32M")
        one, three, sources = bench_peers(work, rate)
        print(f"| three seeders at {rate}/s each vs one at {rate}/s | {one / three:.2f} | >= 2.5 |")
        slow = bench_slow_peer(work)
        print(f"| a seeder beside one at 512K/s vs that seeder alone | {alone / slow:.2f} | about 1 |")
        print(f"\nsources used by the three-seeder pulls: {sources}")
    finally:
        for proc in (lucidd, registry):
            if proc:
                proc.terminate()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
