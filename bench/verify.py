"""Driver of bench/verify: a verifier node A (1 thread, 1 slot) checks answers from a serving
node B (2 threads, 2 slots), honest or lying, through lucidd's HTTP API with
`X-Lucid-Route: peer` and `X-Lucid-Verify: spot` (16 positions and the end). Standard library
only. Reports ratios and rates, never absolute times as results."""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

LUCIDD = os.environ["LUCIDD_BIN"]
LLAMA = os.environ["LLAMA_SERVER_BINARY"]
MODEL = os.environ["MODEL"]
# The other model and the cruder quantization a liar really runs (under MODEL's name).
OTHER_MODELS = {"other-model": os.environ.get("OTHER_MODEL"), "crude-quant": os.environ.get("CRUDE_MODEL")}
HONEST = int(os.environ.get("VERIFY_HONEST", "1000"))
LIES = int(os.environ.get("VERIFY_LIES", "50"))
PREDICT = int(os.environ.get("VERIFY_TOKENS", "128"))
ALL_LIARS = "made-up-text,truncate,drop-system,other-model,hotter,crude-quant"
LIARS = [lie for lie in os.environ.get("VERIFY_LIARS", ALL_LIARS).split(",") if lie]
# Liars measured a second time with every position checked (`X-Lucid-Verify: full`): a changed
# prompt shows where the answer departs from the asked one, which a spot check may not look at.
FULL_LIARS = [lie for lie in os.environ.get("VERIFY_FULL_LIARS", "drop-system").split(",") if lie]
DEFAULT_SHARE = 0.1

QUESTIONS = [
    "Name three colours of the rainbow.", "What is the capital of France?",
    "Write a haiku about rain.", "Explain what a noun is.", "List three fruits.",
    "Why do birds sing?", "Give me a tip for sleeping well.", "What is 12 plus 7?",
    "Describe a cat in one sentence.", "What is the opposite of hot?",
    "Suggest a name for a dog.", "What do bees make?", "How many days are in a week?",
    "Tell me a fun fact about the moon.", "What is water made of?",
    "Write a short greeting for a friend.", "What is a verb?", "Name a planet.",
    "What colour is the sky on a clear day?", "Give one reason to read books.",
]
SYSTEMS = [None, "Answer in French only.", "You are a pirate. Talk like one.",
           "Answer with one word only."]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Node:
    def __init__(self, name, extra, other=None, data_dir=None):
        """A lucidd serving the chat model (and `other` beside it), in `data_dir` (made
        beforehand, with its identity) or a new directory."""
        self.dir = data_dir or tempfile.mkdtemp(prefix=f"verify-{name}-")
        models = os.path.join(self.dir, "models")
        os.makedirs(models, exist_ok=True)
        os.symlink(MODEL, os.path.join(models, "smollm2.gguf"))
        if other:
            os.symlink(other, os.path.join(models, "other.gguf"))
        self.log_path = os.path.join(self.dir, "log")
        addr_file = os.path.join(self.dir, "addr")
        self.proc = subprocess.Popen(
            [LUCIDD, "--listen", "127.0.0.1:0", "--no-mdns", "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
             "--data-dir", self.dir, "--addr-file", addr_file, "--sysfs-root", os.path.join(self.dir, "sys"),
             "--worker", "llama-cpp", "--model-dir", models, "--llama-server-binary", LLAMA] + extra,
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
            env={**os.environ, "RUST_LOG": "info"})
        deadline = time.time() + 60
        while not os.path.exists(addr_file) or not open(addr_file).read():
            if time.time() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"{name} did not start:\n" + open(self.log_path).read())
            time.sleep(0.05)
        self.http = "http://" + open(addr_file).read().strip()

    def get(self, path):
        return json.load(urllib.request.urlopen(self.http + path))

    def peer_id(self):
        return self.get("/api/phase/network")["peer_id"]

    def tcp_addr(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            addrs = [a for a in self.get("/api/phase/network")["listen_addrs"] if "/tcp/" in a]
            if addrs:
                return addrs[0]
            time.sleep(0.05)
        raise SystemExit("no p2p address")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def ask(a, body, route="peer", verify="spot"):
    request = urllib.request.Request(
        a.http + "/api/chat", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "X-Lucid-Route": route,
                 "X-Lucid-Verify": verify, "X-Lucid-Accept-Unverified": "true"})
    try:
        return json.load(urllib.request.urlopen(request, timeout=300))
    except urllib.error.HTTPError as e:
        return json.load(e)


def question(rng, lie=None):
    greedy = rng.random() < 0.5
    options = {"num_predict": PREDICT}
    options.update({"temperature": 0} if greedy else {"seed": rng.randrange(1 << 30)})
    messages = []
    # Leaving out a system prompt is a lie only where there is one.
    system = rng.choice(SYSTEMS[1:] if lie == "drop-system" else SYSTEMS)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": rng.choice(QUESTIONS)})
    return greedy, {"model": "smollm2", "messages": messages, "stream": False, "options": options}


def check_times(a, seen):
    """The verifier's check times (ms) logged since the last call."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", open(a.log_path).read())
    times = [int(m) for m in re.findall(r"spot check.*?ms=(\d+)", text)]
    return times[seen:], len(times)


def start_pair(lie):
    """B (honest or lying) and A, whose identity B allows."""
    a_dir = tempfile.mkdtemp(prefix="verify-A-")
    a_id = subprocess.run([LUCIDD, "id", "--data-dir", a_dir], capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(a_dir, "policy.toml"), "w") as f:
        f.write("[verify]\nshare = 0.0\nreputation_floor = 0.0\n")
    fault = "other-model" if lie in OTHER_MODELS else lie
    b_dir = tempfile.mkdtemp(prefix="verify-B-")
    with open(os.path.join(b_dir, "policy.toml"), "w") as f:
        # The bench asks faster than the default per-signer rate allows.
        f.write("per_peer_rate = 100000\nmax_concurrent_remote_jobs = 4\n")
    b = Node(f"B-{lie or 'honest'}", ["--threads", "2", "--parallel", "2", "--allow-signer", a_id]
             + (["--test-fault", fault] if fault else []), other=OTHER_MODELS.get(lie), data_dir=b_dir)
    a = Node("A", ["--threads", "1", "--parallel", "1", "--bootstrap-peer", b.tcp_addr()], data_dir=a_dir)
    b_id = b.peer_id()
    deadline = time.time() + 60
    while True:
        peers = a.get("/api/phase/network")["peers"]
        if any(p["peer_id"] == b_id and p["models"] for p in peers):
            break
        if time.time() > deadline:
            raise SystemExit("A never saw B's catalog")
        time.sleep(0.05)
    return a, b


def run(lie, count, rng, verify="spot"):
    a, b = start_pair(lie)
    outcomes = {"greedy": {"passed": 0, "failed": 0, "not_checked": 0},
                "sampled": {"passed": 0, "failed": 0, "not_checked": 0}}
    zs = []
    shares = []
    # Greedy lies whose text is what the honest model says too (the lie changed nothing a
    # check of the output could see), and how many of the others were caught.
    same = {"identical": 0, "differing": 0, "differing_caught": 0}
    reasons = {}
    seen = 0
    try:
        for i in range(count):
            greedy, body = question(rng, lie)
            answer = ask(a, body, verify=verify)
            check = answer.get("spot_check") or {"result": "not_checked", "reason": answer.get("error", "no check")}
            if check["result"] == "not_checked":
                reasons[check.get("reason", "?")[:90]] = reasons.get(check.get("reason", "?")[:90], 0) + 1
            kind = "greedy" if greedy else "sampled"
            if lie == "drop-system" and greedy and check["result"] != "not_checked":
                honest = ask(a, body, route="local")
                if honest.get("message", {}).get("content") == answer.get("message", {}).get("content"):
                    same["identical"] += 1
                else:
                    same["differing"] += 1
                    same["differing_caught"] += check["result"] == "failed"
            outcomes[kind][check["result"]] += 1
            if check.get("z") is not None:
                zs.append(check["z"])
            if check["result"] == "failed" and lie is None:
                log(f"  FALSE ALARM: {check.get('reason')}")
            times, seen_now = check_times(a, seen)
            seen = seen_now
            gen_ms = (answer.get("eval_duration", 0) + answer.get("prompt_eval_duration", 0)) / 1e6
            if times and gen_ms > 0:
                # Compute = wall time × threads: the verifier runs 1 thread, the server 2.
                shares.append((times[-1] * 1) / (gen_ms * 2))
            if (i + 1) % 100 == 0:
                log(f"  {lie or 'honest'}: {i + 1}/{count}")
    finally:
        a.stop()
        b.stop()
    for reason, n in sorted(reasons.items(), key=lambda r: -r[1]):
        log(f"  not checked ({lie or 'honest'}) x{n}: {reason}")
    return outcomes, zs, shares, same


def main():
    rng = random.Random(15)
    log(f"honest answers: {HONEST}; per liar: {LIES}; up to {PREDICT} tokens each")
    honest, honest_z, shares, _ = run(None, HONEST, rng)
    checked = sum(o["passed"] + o["failed"] for o in honest.values())
    alarms = sum(o["failed"] for o in honest.values())
    shares.sort()
    mean_share = sum(shares) / max(len(shares), 1)
    print(f"\n## bench/verify (SmolLM2-135M, answers of up to {PREDICT} tokens; verifier 1 thread 1 slot, "
          "server 2 threads 2 slots; 16 positions and the end per check)\n")
    print(f"honest answers checked: {checked}; false alarms: {alarms} ({100.0 * alarms / max(checked, 1):.2f}%)")
    print(f"  greedy {honest['greedy']}, sampled {honest['sampled']}")
    if honest_z:
        print(f"  sampled answers' z: min {min(honest_z):.2f}, mean {sum(honest_z) / len(honest_z):.2f}")
    if shares:
        print(f"check compute / generation compute per checked answer: mean {mean_share:.2f}, "
              f"p50 {shares[len(shares) // 2]:.2f}, p90 {shares[int(len(shares) * 0.9)]:.2f}")
        print(f"amortised at the default policy (share {DEFAULT_SHARE} after a peer's first 10): "
              f"{DEFAULT_SHARE * mean_share:.3f} of generation compute")
    print("\n| liar | greedy caught | sampled caught | sampled z (mean) |", flush=True)
    print("|---|---|---|---|")
    for lie, verify in [(lie, "spot") for lie in LIARS] + [(lie, "full") for lie in FULL_LIARS]:
        outcomes, zs, _, same = run(lie, LIES, rng, verify)
        def rate(o):
            n = o["passed"] + o["failed"]
            return f"{o['failed']}/{n} ({100.0 * o['failed'] / max(n, 1):.0f}%)"
        zmean = f"{sum(zs) / len(zs):.2f}" if zs else "-"
        name = lie if verify == "spot" else f"{lie} (full check)"
        print(f"| {name} | {rate(outcomes['greedy'])} | {rate(outcomes['sampled'])} | {zmean} |", flush=True)
        if lie in ("hotter", "crude-quant") and zs:
            print(f"  {lie}, sampled: {summed(zs)}")
        if lie == "crude-quant":
            for kind in ("greedy", "sampled"):
                o = outcomes[kind]
                p = o["failed"] / max(o["passed"] + o["failed"], 1)
                print(f"  {lie}, {kind}: caught within 10 checked answers with probability "
                      f"{100.0 * (1 - (1 - p) ** 10):.2f}% (from the rate per answer, as independent)")
        if lie == "drop-system" and same["identical"] + same["differing"]:
            print(f"  {lie}, greedy: {same['identical']} answers were what the honest model says "
                  f"too; of the {same['differing']} that differed, {same['differing_caught']} were caught")
    if honest_z:
        print(f"  honest, sampled (for comparison): {summed(honest_z)}")


def summed(zs):
    """When a peer's summed statistic (its standing's, SPEC §11) would cross -6, approximating
    equal variances per answer: z_total = sum(z) / sqrt(k)."""
    total = 0.0
    for k, z in enumerate(zs, 1):
        total += z
        if total / (k ** 0.5) < -6.0:
            return f"the summed statistic crosses -6 after {k} sampled answers"
    return f"the summed statistic after {len(zs)} sampled answers is {total / len(zs) ** 0.5:.2f} (never under -6)"


if __name__ == "__main__":
    main()
