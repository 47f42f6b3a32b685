# Run as root: python3 crates/fjord-trust/bench/image_ab.py [N]  (FJORD=path/to/fjord)
# Same-run A/B for a signed container image: deploy (pull + verification) and cold start,
# with and without --trust-policy. Uses docker-registry, umoci, skopeo, runc (as in tests).
import json, os, re, subprocess, sys, time, urllib.request, base64, statistics, tempfile, socket
FJ = os.environ.get("FJORD", "/var/tmp/fjord-target/debug/fjord")
work = tempfile.mkdtemp(prefix="trust-ibench-", dir="/var/tmp")
def run(*a, **k): return subprocess.run(list(a), check=True, capture_output=True, text=True, **k)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
os.makedirs(f"{work}/reg")
open(f"{work}/reg.yml", "w").write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {work}/reg\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: x\n")
reg = subprocess.Popen(["docker-registry", "serve", f"{work}/reg.yml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1)
lay = f"{work}/oci"
run("umoci", "init", "--layout", lay); run("umoci", "new", "--image", f"{lay}:v1")
run("umoci", "unpack", "--image", f"{lay}:v1", f"{work}/b")
root = f"{work}/b/rootfs"
for d in ["bin", "www", "tmp", "proc", "dev", "etc"]: os.makedirs(f"{root}/{d}", exist_ok=True)
run("cp", "/bin/busybox", f"{root}/bin/busybox")
open(f"{root}/www/index.html", "w").write("hi\n")
open(f"{root}/etc/passwd", "w").write("root:x:0:0:root:/root:/bin/sh\n")
run("umoci", "repack", "--image", f"{lay}:v1", f"{work}/b")
run("umoci", "config", "--image", f"{lay}:v1", "--config.exposedports=8080/tcp", "--config.entrypoint=/bin/busybox", "--config.cmd=httpd", "--config.cmd=-f", "--config.cmd=-p", "--config.cmd=8080", "--config.cmd=-h", "--config.cmd=/www")
img = f"127.0.0.1:{port}/web:1"
run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{lay}:v1", f"docker://{img}")
env = dict(os.environ, FJORD_KEY_PASSWORD="pw")
run(FJ, "key", "generate", "--output-key-prefix", f"{work}/k", env=env)
run(FJ, "sign", "--key", f"{work}/k.key", img, env=env)
open(f"{work}/policy.yml", "w").write(f"default:\n  keys: [{work}/k.pub]\n")

def serve(name, extra):
    d = f"{work}/{name}"; os.makedirs(f"{d}/data")
    log = open(f"{d}/log", "w")
    p = subprocess.Popen([FJ, "serve", "--listen", "127.0.0.1:0", "--data-dir", f"{d}/data", "--tune-kernel=false"] + extra, stdout=log, stderr=log, env=dict(os.environ, RUST_LOG="info"))
    for _ in range(600):
        if os.path.exists(f"{d}/data/gateway.addr"): break
        time.sleep(0.05)
    return dict(p=p, url="http://" + open(f"{d}/data/gateway.addr").read().strip(), pw=open(f"{d}/data/secrets/basic-auth-password").read().strip(), dir=d)

def req(s, method, path, body=None):
    r = urllib.request.Request(s["url"] + path, method=method, data=None if body is None else json.dumps(body).encode())
    r.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{s['pw']}".encode()).decode())
    with urllib.request.urlopen(r, timeout=60) as resp: return resp.status, resp.read()

def status(s): return json.loads(req(s, "GET", "/system/function/web")[1])
servers = {"no-policy": serve("a", []), "policy": serve("b", ["--trust-policy", f"{work}/policy.yml"])}
for name, s in servers.items():
    t0 = time.perf_counter()
    req(s, "POST", "/system/functions", {"service": "web", "image": img, "labels": {"com.openfaas.scale.zero": "true"}})
    accepted = time.perf_counter() - t0
    while status(s)["availableReplicas"] < 1: time.sleep(0.02)
    print(f"{name}: deploy accepted (pull + verification) {accepted*1000:.0f} ms, ready {1000*(time.perf_counter()-t0):.0f} ms, trust={status(s)['fjord'].get('trust')}")

def cold(s):
    req(s, "POST", "/system/scale-function/web", {"serviceName": "web", "replicas": 0})
    while status(s)["availableReplicas"] != 0: time.sleep(0.02)
    t0 = time.perf_counter()
    with urllib.request.urlopen(s["url"] + "/function/web", timeout=60) as r: r.read()
    return (time.perf_counter() - t0) * 1000
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
res = {k: [] for k in servers}
for i in range(N):
    for k, s in (servers.items() if i % 2 == 0 else reversed(list(servers.items()))):
        res[k].append(cold(s))
for k, v in res.items():
    v = sorted(v); print(f"{k}: container cold start median {statistics.median(v):.1f} ms, min {v[0]:.1f}, max {v[-1]:.1f} (n={len(v)})")
for s in servers.values():
    s["p"].terminate(); s["p"].wait()
    for line in open(s["dir"] + "/log"):
        if "signature verified" in line: print(re.sub(r"\x1b\[[0-9;]*m", "", line.strip())[:260])
reg.terminate()
