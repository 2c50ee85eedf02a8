"""Checks a rendered overlay (`kubectl kustomize k8s/overlays/<name>`) for what the schemas
and checkov cannot see: that the pieces fit each other and the design.

    python k8s/check.py RENDERED.yaml --overlay dev|prod --mochi MOCHI \
        [--nats-cluster CLUSTER.conf] [--nats-server BIN]

MOCHI is the binary whose `mochi nats config --gpu-node …` (for the GPU nodes the rendering
holds) the NATS users must equal; with BIN, the rendered NATS configuration is also parsed
by that nats-server (`-t`), with the passwords' variables set. Prints one line per problem
and exits 1 if there is any; prints a summary and exits 0 otherwise.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "Job"}
# The NATS user of each role's pods (a GPU node's is `node-<its id>`).
NATS_USERS = {"gateway": "gateway", "coordinator": "coordinator", "nats-setup": "admin"}
# Expected replicas per overlay (for gpu-node: Deployments of one replica each).
REPLICAS = {
    "dev": {"nats": 1, "gateway": 1, "coordinator": 1, "gpu-node": 1},
    "prod": {"nats": 3, "gateway": 3, "coordinator": 2, "gpu-node": 8},
}
# Who may reach NATS's client port, by component label (plus the submitter label).
NATS_CLIENTS = {"gateway", "coordinator", "gpu-node", "nats-setup"}


def component(labels):
    return (labels or {}).get("app.kubernetes.io/component")


def selects(selector, labels):
    return all((labels or {}).get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def password_key(user):
    return "MOCHI_NATS_PASSWORD_" + user.upper().replace("-", "_")


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rendered")
    parser.add_argument("--overlay", required=True, choices=sorted(REPLICAS))
    parser.add_argument("--mochi", required=True, help="the mochi binary (`mochi nats config`)")
    parser.add_argument("--nats-server")
    parser.add_argument("--nats-cluster", help="a `mochi nats cluster` block, standing in for the mochi-nats-cluster secret")
    parser.add_argument("--podmonitor", help="monitoring/podmonitor.yaml: must scrape every role")
    args = parser.parse_args()
    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems = []

    def bad(message):
        problems.append(message)

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "mochi":
            bad(f"{d['kind']}/{d['metadata']['name']}: not in namespace mochi")
    config_maps = by_kind.get("ConfigMap", {})
    workloads = [d for k in WORKLOADS for d in by_kind.get(k, {}).values()]
    pods = {}  # component -> (workload, pod spec, pod labels), the first of each
    every = []  # (component, workload, pod spec, pod labels) of every workload
    node_ids = []  # the GPU nodes' ids, in the order of their Deployments

    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        template = w["spec"]["template"]
        spec = template["spec"]
        labels = template["metadata"].get("labels", {})
        comp = component(labels)
        if comp is None:
            bad(f"{name}: pods without an app.kubernetes.io/component label")
            continue
        pods.setdefault(comp, (w, spec, labels))
        every.append((comp, w, spec, labels))
        if w["kind"] != "Job" and not selects(w["spec"]["selector"], labels):
            bad(f"{name}: its selector does not select its own pods")
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser", 0) == 0:
            bad(f"{name}: pods may run as root")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            bad(f"{name}: no RuntimeDefault seccomp profile")
        if spec.get("automountServiceAccountToken") is not False:
            bad(f"{name}: mounts a service account token")
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in config_maps:
                bad(f"{name}: volume {v['name']} names a missing ConfigMap {v['configMap']['name']}")
        for c in spec["containers"]:
            cname = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                bad(f"{cname}: privilege escalation allowed")
            if sc.get("readOnlyRootFilesystem") is not True:
                bad(f"{cname}: writable root file system")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                bad(f"{cname}: capabilities not all dropped")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(kind, {}):
                        bad(f"{cname}: no {resource} {kind}")
            if w["kind"] != "Job":
                live = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
                ready = c.get("readinessProbe", {}).get("httpGet", {}).get("path", "")
                if live != "/healthz" or not ready.startswith(("/readyz", "/healthz?js-enabled-only")):
                    bad(f"{cname}: liveness must be /healthz and readiness /readyz (got {live}, {ready})")
            env = env_map(c)
            user = NATS_USERS.get(comp)
            if comp == "gpu-node" and c["name"] == "gpu-node":
                node = env.get("MOCHI_GPU_NODE__NODE_ID", {}).get("value")
                if not node or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", node):
                    bad(f"{cname}: MOCHI_GPU_NODE__NODE_ID must be a fixed id (it names the node's NATS user)")
                    continue
                if node in node_ids:
                    bad(f"{cname}: node id {node} is taken by another Deployment; two processes would share it")
                node_ids.append(node)
                user = f"node-{node}"
                if w["spec"].get("replicas", 1) != 1:
                    bad(f"{cname}: a GPU node Deployment runs one pod, its id's only process")
            if user is not None:
                if env.get("MOCHI_NATS__USER", {}).get("value") != user:
                    bad(f"{cname}: must log in to NATS as {user}")
                ref = env.get("MOCHI_NATS__PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
                if ref.get("name") != "mochi-nats" or ref.get("key") != password_key(user):
                    bad(f"{cname}: its NATS password must be mochi-nats/{password_key(user)}, got {ref}")
                if ref.get("optional"):
                    bad(f"{cname}: the NATS password must not be optional")

    # NATS: the users' block (every role and every GPU node found above), the passwords,
    # replicas, routes, durability.
    node_args = [a for node in node_ids for a in ("--gpu-node", node)] or ["--gpu-nodes", "0"]
    generated = subprocess.run([args.mochi, "nats", "config", *node_args], capture_output=True, text=True)
    if generated.returncode != 0:
        bad(f"`mochi nats config` refuses the GPU nodes {node_ids}: {generated.stderr.strip()}")
    nats_auth = generated.stdout
    nats_cm = next((cm for n, cm in config_maps.items() if n.startswith("nats-config")), None)
    mochi_cm = next((cm for n, cm in config_maps.items() if n.startswith("mochi-config")), None)
    nats_conf = (nats_cm or {}).get("data", {}).get("nats.conf", "")
    if nats_cm is None or nats_cm["data"].get("nats-auth.conf") != nats_auth:
        bad(f"nats-config/nats-auth.conf differs from `mochi nats config` for GPU nodes {node_ids}: regenerate the overlay's nats-auth.conf")
    if not re.search(r"^\s*include\s+\"?(\./)?nats-auth\.conf\"?\s*;?\s*$", nats_conf, re.MULTILINE):
        bad("nats.conf does not include nats-auth.conf: NATS would run without authorization")
    if re.search(r"^\s*no_auth_user", nats_conf, re.MULTILINE):
        bad("nats.conf sets no_auth_user")
    if not re.search(r"sync_interval:\s*always", nats_conf):
        bad("nats.conf: JetStream must sync every write (sync_interval: always)")
    cluster_include = re.search(r"^\s*include\s+\"?\.\./nats-cluster/cluster\.conf\"?\s*;?\s*$", nats_conf, re.MULTILINE)
    if args.nats_server and nats_cm is not None:
        with tempfile.TemporaryDirectory() as root:
            # /etc/nats (the config map) and /etc/nats-cluster (the secret) side by side.
            tmp = os.path.join(root, "nats")
            os.makedirs(tmp)
            if cluster_include and args.nats_cluster:
                os.makedirs(os.path.join(root, "nats-cluster"))
                shutil.copy(args.nats_cluster, os.path.join(root, "nats-cluster", "cluster.conf"))
            for name, text in nats_cm["data"].items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text.replace("/data/jetstream", os.path.join(root, "jetstream")))
            env = dict(os.environ, POD_NAME="nats-0")
            for key in re.findall(r"\$(MOCHI_NATS_PASSWORD_[A-Z0-9_]+)", nats_auth):
                env[key] = "Checkpassword0123456789"
            run = subprocess.run([os.path.abspath(args.nats_server), "-c", "nats.conf", "-t"], cwd=tmp, env=env,
                                 capture_output=True, text=True)
            if run.returncode != 0:
                bad(f"nats-server refuses the rendered nats.conf: {(run.stderr + run.stdout).strip()}")
    users = re.findall(r"\$(MOCHI_NATS_PASSWORD_[A-Z0-9_]+)", nats_auth)
    if "nats" in pods:
        w, spec, _ = pods["nats"]
        env = env_map(spec["containers"][0])
        for key in users:
            ref = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef", {})
            if ref != {"name": "mochi-nats", "key": key}:
                bad(f"nats: the server needs {key} from the mochi-nats secret, got {ref}")
        replicas = w["spec"].get("replicas", 1)
        # The routes are in the secret; nats.conf documents the command that writes them.
        routes = sorted(set(re.findall(r"(nats-\d+)\.nats:6222", nats_conf)))
        expected = [f"nats-{i}" for i in range(replicas)] if replicas > 1 else []
        if routes != expected:
            bad(f"nats.conf: cluster routes {routes} do not match {replicas} replicas")
        if replicas > 1:
            if not cluster_include:
                bad("nats.conf: the cluster's routes are not authenticated: include ../nats-cluster/cluster.conf (`mochi nats cluster`)")
            mounts = {m.get("mountPath"): m.get("name") for m in spec["containers"][0].get("volumeMounts", [])}
            volumes = {v.get("name"): v for v in spec.get("volumes", [])}
            secret = volumes.get(mounts.get("/etc/nats-cluster"), {}).get("secret", {})
            if secret.get("secretName") != "mochi-nats-cluster":
                bad("nats: the mochi-nats-cluster secret (the route password) must be mounted at /etc/nats-cluster")
        if re.search(r"^\s*cluster\s*\{", nats_conf, re.MULTILINE):
            bad("nats.conf: a cluster block in the config map carries no route authentication; it belongs in the mochi-nats-cluster secret")
        if mochi_cm is not None:
            toml = tomllib.loads(mochi_cm["data"]["mochi.toml"])
            stored = toml.get("nats", {}).get("jetstream", {}).get("replicas", 1)
            if stored != replicas:
                bad(f"mochi.toml: nats.jetstream.replicas = {stored} on {replicas} NATS servers")
    else:
        bad("no NATS StatefulSet")

    for comp, count in REPLICAS[args.overlay].items():
        if comp == "gpu-node":
            if len(node_ids) != count:
                bad(f"gpu-node: {len(node_ids)} GPU node Deployments, {args.overlay} wants {count}")
        elif comp in pods and pods[comp][0]["spec"].get("replicas", 1) != count:
            bad(f"{comp}: {pods[comp][0]['spec'].get('replicas', 1)} replicas, {args.overlay} wants {count}")

    # GPU nodes: one GPU each, and time to hand a job back.
    for comp, _, spec, _ in every:
        if comp != "gpu-node":
            continue
        c = spec["containers"][0]
        res = c["resources"]
        if res.get("requests", {}).get("nvidia.com/gpu") != 1 or res.get("limits", {}).get("nvidia.com/gpu") != 1:
            bad("gpu-node: each pod must request and limit exactly one nvidia.com/gpu")
        env = env_map(c)
        drain = int(env.get("MOCHI_GPU_NODE__DRAIN_TIMEOUT_MS", {}).get("value", 20000))
        handback = int(env.get("MOCHI_GPU_NODE__HANDBACK_TIMEOUT_MS", {}).get("value", 60000))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace * 1000 < drain + handback + 10000:
            bad(f"gpu-node: terminationGracePeriodSeconds {grace} is shorter than drain + hand-back + 10 s")
        if args.overlay == "prod":
            if env.get("MOCHI_MODEL_DIR", {}).get("value", "").startswith("/models/") is False:
                bad("gpu-node: prod must run the release's weights (MOCHI_MODEL_DIR under /models)")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            if not mounts.get("/models", {}).get("readOnly"):
                bad("gpu-node: the model volume must be mounted read-only at /models")

    # Services select pods; every long-running role has a disruption budget.
    for svc in by_kind.get("Service", {}).values():
        if not any(selects({"matchLabels": svc["spec"]["selector"]}, labels) for _, _, labels in pods.values()):
            bad(f"Service/{svc['metadata']['name']}: selects no pods")
    for comp, w, _, labels in every:
        if w["kind"] != "Job" and not any(selects(p["spec"]["selector"], labels)
                                         for p in by_kind.get("PodDisruptionBudget", {}).values()):
            bad(f"{comp}: no PodDisruptionBudget")

    # Network policies: default deny, every pod covered, NATS open to its clients only.
    policies = by_kind.get("NetworkPolicy", {})
    deny = policies.get("default-deny")
    if not deny or deny["spec"].get("podSelector") != {} or sorted(deny["spec"].get("policyTypes", [])) != ["Egress", "Ingress"] \
            or deny["spec"].get("ingress") or deny["spec"].get("egress"):
        bad("NetworkPolicy/default-deny must select every pod and allow nothing")
    for comp, _, _, labels in every:
        own = [p for n, p in policies.items() if n not in ("default-deny", "dns")
               and selects(p["spec"]["podSelector"], labels)]
        if not own:
            bad(f"{comp}: no NetworkPolicy of its own")
    nats_policy = policies.get("nats")
    if nats_policy:
        for rule in nats_policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if not ports:
                bad("NetworkPolicy/nats: a rule open on every port")
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                comp = labels.get("app.kubernetes.io/component")
                allowed = (4222 in ports and (comp in NATS_CLIENTS or labels == {"mochi-serve/nats-client": "submitter"})) \
                    or (ports == {6222} and comp == "nats" and "namespaceSelector" not in peer)
                if not allowed or "ipBlock" in peer:
                    bad(f"NetworkPolicy/nats: {peer} may reach ports {sorted(ports)}")
    else:
        bad("no NetworkPolicy for NATS")

    if args.podmonitor:
        with open(args.podmonitor) as f:
            monitor = yaml.safe_load(f)
        if monitor["metadata"].get("namespace") != "mochi":
            bad("podmonitor: not in namespace mochi")
        expressions = monitor["spec"]["selector"].get("matchExpressions", [])
        ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
        for comp, _, spec, labels in every:
            if comp not in ("gateway", "coordinator", "gpu-node"):
                continue
            if not all(labels.get(e["key"]) in e["values"] for e in expressions if e["operator"] == "In"):
                bad(f"podmonitor: does not select the {comp} pods")
            named = {p.get("name") for c in spec["containers"] for p in c.get("ports", [])}
            if not named & ports:
                bad(f"podmonitor: scrapes ports {sorted(ports)}, the {comp} pods name {sorted(named)}")

    if args.overlay == "prod":
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("gateway")
        if not hpa or hpa["spec"]["scaleTargetRef"]["name"] not in by_kind.get("Deployment", {}):
            bad("prod: the gateway autoscaler must scale the gateway Deployment")
        ingress = by_kind.get("Ingress", {}).get("gateway")
        backends = [p["backend"]["service"] for r in (ingress or {}).get("spec", {}).get("rules", [])
                    for p in r["http"]["paths"]]
        if not backends or any(b["name"] not in by_kind.get("Service", {}) for b in backends):
            bad("prod: the Ingress must route to the gateway Service")
        if not (ingress or {}).get("spec", {}).get("tls"):
            bad("prod: the Ingress must terminate TLS")

    for p in problems:
        print(f"check.py ({args.overlay}): {p}")
    if problems:
        return 1
    print(f"check.py ({args.overlay}): {len(docs)} objects, {len(every)} workloads ({len(node_ids)} GPU nodes), {len(policies)} network policies: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
