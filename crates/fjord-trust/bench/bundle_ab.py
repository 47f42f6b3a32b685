# Run as root: python3 crates/fjord-trust/bench/bundle_ab.py [N]  (FJORD=path/to/fjord)
# Same-run A/B: cold start of a signed bundle function with and without --trust-policy.
import json, os, re, subprocess, sys, time, urllib.request, base64, statistics, tempfile
FJ = os.environ.get("FJORD", "/var/tmp/fjord-target/debug/fjord")
work = tempfile.mkdtemp(prefix="trust-bench-", dir="/var/tmp")
env = dict(os.environ, FJORD_KEY_PASSWORD="pw")
subprocess.run([FJ, "key", "generate", "--output-key-prefix", f"{work}/k"], env=env, check=True, capture_output=True)
open(f"{work}/policy.yml", "w").write(f"default:\n  keys: [{work}/k.pub]\n")

def serve(name, extra):
    d = f"{work}/{name}"; os.makedirs(f"{d}/data")
    log = open(f"{d}/log", "w")
    p = subprocess.Popen([FJ, "serve", "--listen", "127.0.0.1:0", "--data-dir", f"{d}/data", "--tune-kernel=false"] + extra, stdout=log, stderr=log, env=dict(os.environ, RUST_LOG="info"))
    for _ in range(300):
        if os.path.exists(f"{d}/data/gateway.addr"): break
        time.sleep(0.05)
    addr = open(f"{d}/data/gateway.addr").read().strip()
    pw = open(f"{d}/data/secrets/basic-auth-password").read().strip()
    return dict(p=p, url=f"http://{addr}", pw=pw, dir=d)

def req(s, method, path, body=None):
    r = urllib.request.Request(s["url"] + path, method=method, data=None if body is None else json.dumps(body).encode())
    r.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{s['pw']}".encode()).decode())
    with urllib.request.urlopen(r, timeout=30) as resp:
        return resp.status, resp.read()

proj = f"{work}/project"; os.makedirs(f"{proj}/greet")
open(f"{proj}/stack.yml", "w").write("version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  greet:\n    lang: python3-http\n    handler: ./greet\n    image: greet:latest\n    labels:\n      com.openfaas.scale.zero: \"true\"\n")
open(f"{proj}/greet/handler.py", "w").write('def handle(event, context):\n    return {"statusCode": 200, "body": "hi"}\n')
servers = {"no-policy": serve("a", []), "policy": serve("b", ["--trust-policy", f"{work}/policy.yml"])}
for name, s in servers.items():
    e = dict(env, FJORD_PASSWORD=s["pw"], FJORD_CONFIG=f"{work}/{name}.json")
    t0 = time.time()
    r = subprocess.run([FJ, "up", "-f", f"{proj}/stack.yml", "-g", s["url"], "--sign", f"{work}/k.key"], env=e, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    print(name, "fjord up (build cached after first) s:", round(time.time() - t0, 2))

def cold(s):
    req(s, "POST", "/system/scale-function/greet", {"serviceName": "greet", "replicas": 0})
    while True:
        _, b = req(s, "GET", "/system/function/greet")
        if json.loads(b)["availableReplicas"] == 0: break
        time.sleep(0.02)
    t0 = time.perf_counter()
    with urllib.request.urlopen(s["url"] + "/function/greet", timeout=30) as r: r.read()
    return (time.perf_counter() - t0) * 1000

res = {k: [] for k in servers}
N = int(sys.argv[1]) if len(sys.argv) > 1 else 15
for i in range(N):
    for k, s in (servers.items() if i % 2 == 0 else reversed(list(servers.items()))):
        res[k].append(cold(s))
for k, v in res.items():
    print(f"{k}: cold start median {statistics.median(v):.1f} ms, p10 {sorted(v)[len(v)//10]:.1f}, p90 {sorted(v)[len(v)*9//10]:.1f} (n={len(v)})")
for s in servers.values():
    s["p"].terminate(); s["p"].wait()
    for line in open(s["dir"] + "/log"):
        if "signature verified" in line: print(re.sub(r"\x1b\[[0-9;]*m", "", line.strip())[:300])
