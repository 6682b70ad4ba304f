"""The real buf and Envoy binaries accept the contracts and the generated config."""

import subprocess
import sys
from pathlib import Path

from edge import auth
from edge import envoy_config as envoy
from mesh import topology
from mesh.infra import envoy_binary
from mesh.supervisor import REPO_ROOT

BUF = str(Path(sys.executable).parent / "buf")
SCHEMA = REPO_ROOT / "gen" / "livebet.binpb"


def test_buf_lint_passes_with_standard_rules() -> None:
    result = subprocess.run([BUF, "lint", "proto"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_a_contract_that_breaks_the_rules(tmp_path: Path) -> None:
    (tmp_path / "buf.yaml").write_text("version: v2\nlint:\n  use: [STANDARD]\n")
    pkg = tmp_path / "livebet" / "bad" / "v1"
    pkg.mkdir(parents=True)
    (pkg / "bad.proto").write_text(
        'syntax = "proto3";\npackage livebet.bad.v1;\nenum Color { RED = 0; }\n'
        "service Things { rpc Get(Color2) returns (Color2); }\nmessage Color2 {}\n"
    )
    result = subprocess.run([BUF, "lint"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "ENUM_ZERO_VALUE_SUFFIX" in result.stdout or "UNSPECIFIED" in result.stdout


def _validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_envoy_accepts_the_generated_config(tmp_path: Path) -> None:
    config = tmp_path / "envoy.json"
    keys = auth.ensure_keys(tmp_path / "edge")
    web = REPO_ROOT / "edge" / "web"
    config.write_text(envoy.render(topology.load().resolve_ports(), str(keys.jwks_path), str(SCHEMA), str(web)))
    result = _validate(config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr


def test_envoy_accepts_the_static_cluster_config(tmp_path: Path) -> None:
    keys = auth.ensure_keys(tmp_path / "edge")
    text = envoy.render_cluster(topology.load())
    files = envoy.CLUSTER_FILES
    text = text.replace(files["jwks"], str(keys.jwks_path)).replace(files["schema"], str(SCHEMA))
    text = text.replace(files["web"], str(REPO_ROOT / "edge" / "web"))
    config = tmp_path / "envoy-cluster.json"
    config.write_text(text)
    result = _validate(config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
