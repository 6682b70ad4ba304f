"""``python -m mesh``: run and inspect the local livebet platform.

up             start NATS, Valkey, PostgreSQL, every service and Envoy; Ctrl-C stops all
status         health, pid and restart count of every process of a running `up`
wipe           delete the platform's data (refused while `up` runs)
envoy-config   print the Envoy configuration generated from the topology
observability  write Prometheus scrape config, rules (from mesh/slo.toml) and a Grafana dashboard
bench          every benchmark with a report: JSON, Markdown table, PNG plots (make bench)
roll           rolling restart of services without downtime (new process SERVING, then the old drains)
k8s            write the Kubernetes base manifests (mesh/deploy/k8s/base) from the topology
sla            latency percentiles per API against mesh/slo.toml; exit 1 on a breach
token          issue a signed token for a local account (--account A [--role admin])
schema         write a Buf image of the contracts, for `buf curl --schema` without reflection
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from edge import auth, envoy_config
from mesh import sla, topology
from mesh.supervisor import CONTROL_SOCKET, STATE_FILE, Supervisor, grpc_health


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(data_dir: Path) -> bool:
    lock = data_dir / "run" / "mesh.lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def _status(data_dir: Path, as_json: bool) -> int:
    path = data_dir / "run" / STATE_FILE
    if not path.exists():
        print(f"no livebet state in {data_dir} (start it with `make run`)", file=sys.stderr)
        return 2
    state = json.loads(path.read_text())
    up = _running(data_dir) and _alive(state.get("supervisor_pid"))
    rows = []
    ok = up
    for p in state["processes"]:
        alive = _alive(p["pid"])
        if p["kind"] == "service" and alive:
            health = await grpc_health(p["health_target"], 1.0)
        else:
            health = p["status"].upper() if alive else "DOWN"
        ok = ok and alive and health in ("SERVING", "READY")
        rows.append({**p, "alive": alive, "health": health})
    if as_json:
        print(
            json.dumps(
                {"running": up, "edge": state["edge"], "sla_breaches": state.get("sla_breaches", 0), "processes": rows},
                indent=2,
            )
        )
    else:
        print(
            f"supervisor: {'running' if up else 'NOT running'} (pid {state['supervisor_pid']}), "
            f"edge http://{state['edge']}, SLA breaches so far: {state.get('sla_breaches', 0)}"
        )
        table = [("process", "pid", "port", "health", "restarts")]
        table += [(r["name"], str(r["pid"] or "-"), str(r["port"]), r["health"], str(r["restarts"])) for r in rows]
        width = [max(len(r[i]) for r in table) for i in range(5)]
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    return 0 if ok else 1


async def _roll(data_dir: Path, names: list[str]) -> int:
    """Ask the running supervisor to roll ``names``; print its progress."""
    path = data_dir / "run" / CONTROL_SOCKET
    if not _running(data_dir) or not path.exists():
        print(f"no running `mesh up` on {data_dir}", file=sys.stderr)
        return 2
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write((json.dumps({"roll": names}) + "\n").encode())
    await writer.drain()
    ok = False
    while line := await reader.readline():
        msg = json.loads(line)
        if "progress" in msg:
            print(msg["progress"], flush=True)
        else:
            ok = bool(msg.get("ok"))
            if not ok:
                print(f"mesh roll failed: {msg.get('error')}", file=sys.stderr)
    writer.close()
    return 0 if ok else 1


def _sla(data_dir: Path, slo: Path, window: float, as_json: bool) -> int:
    path = data_dir / "run" / STATE_FILE
    if not path.exists():
        print(f"no livebet state in {data_dir} (start it with `make run`)", file=sys.stderr)
        return 2
    targets = [p["metrics"] for p in json.loads(path.read_text())["processes"] if p.get("metrics")]
    config = sla.load(slo)
    try:
        first = sla.scrape(targets)
        if window > 0:
            time.sleep(window)
            sample = sla.scrape(targets).minus(first)
        else:
            sample = first
    except OSError as exc:
        print(f"mesh sla: cannot read the services' metrics: {exc}", file=sys.stderr)
        return 2
    rows = sla.evaluate(config, sample)
    print(json.dumps(sla.as_json(rows), indent=2) if as_json else sla.render(rows))
    return 1 if any(r.breaches for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mesh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=Path("var"), help="data folder (default ./var)")
    common.add_argument("--topology", type=Path, default=topology.DEFAULT_PATH, help="topology TOML file")
    up = sub.add_parser("up", parents=[common], help="run the whole platform")
    up.add_argument("--fast", action="store_true", help="no fsync in PostgreSQL (tests, demos)")
    up.add_argument("--grace", type=float, default=5.0, help="seconds a service gets to drain on stop")
    st = sub.add_parser("status", parents=[common], help="health of a running platform")
    st.add_argument("--json", action="store_true")
    wipe = sub.add_parser("wipe", parents=[common], help="delete the platform's data")
    wipe.add_argument("--yes", action="store_true", help="do not ask")
    env = sub.add_parser("envoy-config", parents=[common], help="print the generated Envoy config")
    env.add_argument(
        "--cluster", action="store_true", help="the static config for Kubernetes (edge/envoy-cluster.json)"
    )
    roll = sub.add_parser("roll", parents=[common], help="rolling restart of services, without downtime")
    roll.add_argument("services", nargs="*", help="services to roll, in this order (default: every one)")
    sl = sub.add_parser("sla", parents=[common], help="latency percentiles per API against the SLOs")
    sl.add_argument("--slo", type=Path, default=sla.DEFAULT_PATH, help="objectives file (default mesh/slo.toml)")
    sl.add_argument("--window", type=float, default=0.0, help="judge only the calls of the next S seconds")
    sl.add_argument("--json", action="store_true")
    obs = sub.add_parser("observability", parents=[common], help="write the Prometheus and Grafana files")
    obs.add_argument("-o", "--output", type=Path, default=Path("mesh/observability"))
    k8s = sub.add_parser("k8s", parents=[common], help="write the Kubernetes base manifests from the topology")
    k8s.add_argument("-o", "--output", type=Path, default=Path("mesh/deploy/k8s/base"))
    tok = sub.add_parser("token", parents=[common], help="issue a signed token for a local account")
    tok.add_argument("--account", required=True, help="the account the token acts for (its subject)")
    tok.add_argument("--role", action="append", default=[], help="a role (admin, feed); repeatable")
    tok.add_argument("--ttl", type=float, default=auth.DEFAULT_TTL, help="seconds until it expires (default 12 h)")
    sch = sub.add_parser("schema", help="write a Buf image of the contracts (for buf curl --schema)")
    sch.add_argument("-o", "--output", type=Path, required=True)
    sub.add_parser("bench", help="every benchmark, with a report (see python -m mesh bench -h)", add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        from mesh import bench

        return bench.main(argv[1:])
    args = parser.parse_args(argv)

    if args.command == "up":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        sup = Supervisor(
            topology.load(args.topology),
            args.data_dir,
            durable=not args.fast,
            grace_seconds=args.grace,
            out=lambda s: print(s, flush=True),
        )
        try:
            asyncio.run(sup.up())
        except RuntimeError as exc:
            print(f"mesh up failed: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "status":
        return asyncio.run(_status(args.data_dir, args.json))
    if args.command == "wipe":
        if _running(args.data_dir):
            print("refusing to wipe: `mesh up` is running on this data folder; stop it first", file=sys.stderr)
            return 1
        if not args.data_dir.exists():
            print(f"nothing to wipe at {args.data_dir}")
            return 0
        if not args.yes and input(f"delete {args.data_dir.resolve()}? [y/N] ").strip().lower() != "y":
            return 1
        shutil.rmtree(args.data_dir)
        print(f"wiped {args.data_dir}")
        return 0
    if args.command == "schema":
        from mesh.contracts import schema_image

        args.output.write_bytes(schema_image())
        print(f"wrote {args.output}")
        return 0
    if args.command == "roll":
        names = args.services or [s.name for s in topology.load(args.topology).services]
        return asyncio.run(_roll(args.data_dir, names))
    if args.command == "sla":
        return _sla(args.data_dir, args.slo, args.window, args.json)
    if args.command == "observability":
        from mesh import observability

        args.output.mkdir(parents=True, exist_ok=True)
        for name, text in observability.render(topology.load(args.topology), sla.load()).items():
            (args.output / name).write_text(text)
            print(f"wrote {args.output / name}")
        return 0
    if args.command == "k8s":
        from mesh import k8s as kube

        args.output.mkdir(parents=True, exist_ok=True)
        for name, text in kube.render(topology.load(args.topology)).items():
            (args.output / name).write_text(text)
        print(f"wrote {args.output}")
        return 0
    if args.command == "token":
        try:
            print(auth.issue(auth.ensure_keys(args.data_dir / "edge"), args.account, args.role, args.ttl))
        except ValueError as exc:
            print(f"mesh token: {exc}", file=sys.stderr)
            return 2
        return 0
    t = topology.load(args.topology)
    if args.cluster:
        print(envoy_config.render_cluster(t), end="")
        return 0
    keys = auth.ensure_keys(args.data_dir / "edge")
    root = Path(__file__).resolve().parent.parent
    descriptor, web = root / "gen" / "livebet.binpb", root / "edge" / "web"
    print(envoy_config.render(t, str(keys.jwks_path.resolve()), str(descriptor), str(web)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
